"""Credentials (issue 17): the admin log-in throttled, attempts counted
before the password check, a per-IP limit, the client address from a trusted
proxy header, API tokens that rotate with the password, can be revoked and
expire, password resets rate-limited, one account per e-mail address."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.core.cache import cache
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token

from tests.platform.conftest import PASSWORD

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_counters() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


def _logged_in(c: Client) -> bool:
    return "_auth_user_id" in c.session


def test_admin_login_is_throttled_like_the_site(users: dict[str, User]) -> None:
    c = Client(REMOTE_ADDR="10.1.0.1")
    for _ in range(8):
        c.post("/admin/login/", {"username": "ada", "password": "wrong"})
    response = c.post("/admin/login/", {"username": "ada", "password": PASSWORD})
    # Before: the ninth attempt, with the right password, logged in as a superuser.
    assert response.status_code == 200 and not _logged_in(c)
    assert "Too many failed log-ins" in response.content.decode()


def test_parallel_attempts_after_failures_are_counted_before_the_password_check(
    users: dict[str, User], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.contrib.auth import forms as auth_forms

    from accounts.forms import ThrottledAuthenticationForm

    settings.LOGIN_MAX_FAILURES = 5
    request = RequestFactory().post("/accounts/login/", REMOTE_ADDR="10.1.0.2")
    for _ in range(4):
        form = ThrottledAuthenticationForm(request, {"username": "alice", "password": "x"})
        assert not form.is_valid()
    parallel = 5
    arrived = threading.Barrier(parallel, timeout=1.0)
    checked: list[str] = []

    def slow_authenticate(request: Any, **credentials: Any) -> None:
        # Each password check waits until all parallel attempts got this far
        # (or gives up): with check-then-count all five did.
        checked.append(credentials["username"])
        with contextlib.suppress(threading.BrokenBarrierError):
            arrived.wait()
        return None

    monkeypatch.setattr(auth_forms, "authenticate", slow_authenticate)

    def attempt() -> None:
        ThrottledAuthenticationForm(request, {"username": "alice", "password": "y"}).is_valid()

    threads = [threading.Thread(target=attempt) for _ in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Before: all five were checked (4 failures < 5 when each looked).
    assert len(checked) == 1


def test_one_address_is_limited_across_user_names(users: dict[str, User], settings: Any) -> None:
    settings.LOGIN_MAX_FAILURES_PER_IP = 3
    url = reverse("accounts:login")
    c = Client(REMOTE_ADDR="10.1.0.3")
    for name in ("bob", "mona", "ada"):
        c.post(url, {"username": name, "password": "wrong"})
    locked = c.post(url, {"username": "alice", "password": PASSWORD})
    # Before: every new user name got its own five attempts.
    assert not _logged_in(c) and "Too many failed log-ins" in locked.content.decode()
    elsewhere = Client(REMOTE_ADDR="10.1.0.4")
    elsewhere.post(url, {"username": "alice", "password": PASSWORD})
    assert _logged_in(elsewhere)


def test_an_ipv6_subscriber_s_whole_64_shares_one_allowance(
    users: dict[str, User], settings: Any
) -> None:
    # Before: every address of the /64 had its own five attempts at a
    # password, and its own sign-ups, so a client walking through its
    # addresses was never limited.
    settings.LOGIN_MAX_FAILURES = 3
    settings.SIGNUP_MAX_PER_IP = 1
    url = reverse("accounts:login")
    for host in (1, 2, 3):
        Client(REMOTE_ADDR=f"2001:db8:0:7::{host}").post(
            url, {"username": "alice", "password": "wrong"}
        )
    same_net = Client(REMOTE_ADDR="2001:db8:0:7:ffff::9")
    locked = same_net.post(url, {"username": "alice", "password": PASSWORD})
    assert not _logged_in(same_net) and "Too many failed log-ins" in locked.content.decode()
    token = same_net.post("/api/token/", {"username": "alice", "password": PASSWORD})
    assert token.status_code == 429
    other_net = Client(REMOTE_ADDR="2001:db8:0:8::1")
    other_net.post(url, {"username": "alice", "password": PASSWORD})
    assert _logged_in(other_net)

    def signup(ip: str, n: int) -> int:
        form = {
            "username": f"v6user{n}",
            "email": f"v6user{n}@example.org",
            "password1": PASSWORD,
            "password2": PASSWORD,
        }
        return Client(REMOTE_ADDR=ip).post(reverse("accounts:signup"), form).status_code

    assert [signup(f"2001:db8:0:9::{n}", n) for n in (1, 2)] == [302, 429]
    assert signup("2001:db8:0:a::1", 3) == 302
    # IPv4 clients of a dual-stack listener ("::ffff:a.b.c.d") are each their
    # own address, not all one ::/64.
    assert signup("::ffff:192.0.2.1", 4) == 302
    assert signup("::ffff:192.0.2.2", 5) == 302
    assert signup("192.0.2.1", 6) == 429


def test_successful_log_ins_do_not_use_up_the_address_limit(
    users: dict[str, User], settings: Any
) -> None:
    settings.LOGIN_MAX_FAILURES_PER_IP = 2
    url = reverse("accounts:login")
    for _ in range(4):
        c = Client(REMOTE_ADDR="10.1.0.5")
        c.post(url, {"username": "alice", "password": PASSWORD})
        assert _logged_in(c)


def test_behind_the_proxy_an_attacker_cannot_lock_admin_out_for_everyone(
    users: dict[str, User], settings: Any
) -> None:
    settings.TRUSTED_PROXY_HEADER = "X-Forwarded-For"
    url = reverse("accounts:login")
    proxy = "172.18.0.2"  # every request reaches gunicorn from the proxy
    attacker = Client(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="1.2.3.4, 198.51.100.7")
    for _ in range(6):
        attacker.post(url, {"username": "ada", "password": "wrong"})
    admin = Client(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="203.0.113.9")
    admin.post(url, {"username": "ada", "password": PASSWORD})
    # Before: keyed on REMOTE_ADDR (the proxy), the admin was locked out too.
    assert _logged_in(admin)
    # The client-written part of the header is ignored: the attacker's own
    # address (the entry the proxy appended) stays locked.
    spoof = Client(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="203.0.113.9, 198.51.100.7")
    spoof.post(url, {"username": "ada", "password": PASSWORD})
    assert not _logged_in(spoof)


def test_client_ip_is_the_peer_without_a_configured_proxy_header() -> None:
    from accounts.throttle import client_ip

    request = RequestFactory().get("/", REMOTE_ADDR="10.9.9.9", HTTP_X_FORWARDED_FOR="1.1.1.1")
    assert client_ip(request) == "10.9.9.9"


def _api(token: Token) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Token {token.key}")


def test_password_change_deletes_the_api_token(
    users: dict[str, User], clients: dict[str, Client]
) -> None:
    token = Token.objects.create(user=users["submitter"])
    assert _api(token).get("/api/submissions/").status_code == 200
    clients["submitter"].post(
        reverse("accounts:password_change"),
        {
            "old_password": PASSWORD,
            "new_password1": "An0ther-long-pass",
            "new_password2": "An0ther-long-pass",
        },
    )
    # Before: the old token kept working after the password changed.
    assert _api(token).get("/api/submissions/").status_code == 401
    assert not Token.objects.filter(user=users["submitter"]).exists()


def test_password_reset_deletes_the_api_token(users: dict[str, User]) -> None:
    token = Token.objects.create(user=users["submitter"])
    c = Client()
    c.post(reverse("accounts:password_reset"), {"email": "alice@example.org"})
    link = next(w for w in mail.outbox[0].body.split() if "/accounts/reset/" in w)
    form_page = c.get("/" + link.split("://", 1)[-1].split("/", 1)[1], follow=True)
    new = "Yet-an0ther-long-pass"
    c.post(form_page.redirect_chain[-1][0], {"new_password1": new, "new_password2": new})
    assert User.objects.get(username="alice").check_password(new)
    assert _api(token).get("/api/submissions/").status_code == 401


def test_logging_in_does_not_delete_the_token(users: dict[str, User]) -> None:
    token = Token.objects.create(user=users["submitter"])
    c = Client()
    c.post(reverse("accounts:login"), {"username": "alice", "password": PASSWORD})
    assert _logged_in(c) and _api(token).get("/api/submissions/").status_code == 200


def test_a_token_can_be_revoked_by_its_owner(users: dict[str, User]) -> None:
    token = Token.objects.create(user=users["submitter"])
    assert _api(token).post("/api/token/revoke/").status_code == 204
    assert _api(token).get("/api/submissions/").status_code == 401
    fresh = Client().post("/api/token/", {"username": "alice", "password": PASSWORD}).json()
    assert fresh["token"] != token.key


def test_an_expired_token_is_refused_and_a_new_one_issued(
    users: dict[str, User], settings: Any
) -> None:
    settings.API_TOKEN_TTL_S = 3600
    token = Token.objects.create(user=users["submitter"])
    Token.objects.filter(pk=token.pk).update(created=timezone.now() - timedelta(hours=2))
    response = _api(token).get("/api/submissions/")
    assert response.status_code == 401 and "expired" in response.json()["detail"]
    # The client still sends its expired token while it asks for a new one:
    # before, the token endpoint itself answered 401 "expired".
    renewed = _api(token).post("/api/token/", {"username": "alice", "password": PASSWORD})
    # A credential: no cache keeps it (before: no Cache-Control at all).
    assert renewed["Cache-Control"] == "no-store"
    assert renewed.status_code == 200, renewed.content
    fresh = renewed.json()
    assert fresh["token"] != token.key
    assert _api(Token.objects.get(key=fresh["token"])).get("/api/submissions/").status_code == 200
    # A revoked key in the header is no reason to refuse good credentials either.
    revoked = Client(HTTP_AUTHORIZATION="Token " + "0" * 40)
    again = revoked.post("/api/token/", {"username": "alice", "password": PASSWORD})
    assert again.status_code == 200 and again.json()["token"] == fresh["token"]


def test_a_token_about_to_expire_is_renewed_and_its_expiry_is_told(
    users: dict[str, User], settings: Any
) -> None:
    from datetime import datetime

    settings.API_TOKEN_TTL_S = 30 * 86400
    c = Client()
    first = c.post("/api/token/", {"username": "alice", "password": PASSWORD}).json()
    expires = datetime.fromisoformat(first["expires"])
    assert abs(expires - (timezone.now() + timedelta(days=30))) < timedelta(minutes=1)
    # Two days left: the same token, with its expiry.
    token = Token.objects.get(key=first["token"])
    Token.objects.filter(pk=token.pk).update(created=timezone.now() - timedelta(days=28))
    same = c.post("/api/token/", {"username": "alice", "password": PASSWORD}).json()
    assert same["token"] == first["token"]
    assert datetime.fromisoformat(same["expires"]) < timezone.now() + timedelta(days=2)
    # Minutes left: before, the login answered with that token, which
    # answered 401 soon after.
    Token.objects.filter(pk=token.pk).update(
        created=timezone.now() - timedelta(days=30) + timedelta(minutes=5)
    )
    renewed = c.post("/api/token/", {"username": "alice", "password": PASSWORD}).json()
    assert renewed["token"] != first["token"]
    assert datetime.fromisoformat(renewed["expires"]) > timezone.now() + timedelta(days=29)
    # Tokens that never expire say so.
    settings.API_TOKEN_TTL_S = 0
    forever = c.post("/api/token/", {"username": "alice", "password": PASSWORD}).json()
    assert forever == {"token": renewed["token"], "expires": None}


def test_password_reset_is_rate_limited_per_address(users: dict[str, User], settings: Any) -> None:
    settings.PASSWORD_RESET_MAX_PER_IP = 2
    c = Client(REMOTE_ADDR="10.1.0.6")
    codes = [
        c.post(reverse("accounts:password_reset"), {"email": f"x{i}@example.org"}).status_code
        for i in range(3)
    ]
    # Before: no limit (302 every time).
    assert codes == [302, 302, 429]


def test_password_reset_mails_one_address_a_limited_number_of_times(
    users: dict[str, User], settings: Any
) -> None:
    settings.PASSWORD_RESET_MAX_PER_EMAIL = 1
    answers = []
    for ip in ("10.1.0.7", "10.1.0.8"):
        answers.append(
            Client(REMOTE_ADDR=ip).post(
                reverse("accounts:password_reset"), {"email": "alice@example.org"}
            )
        )
    assert len(mail.outbox) == 1
    # The second asker sees the same answer (no enumeration).
    assert [(r.status_code, r["Location"]) for r in answers] == [
        (answers[0].status_code, answers[0]["Location"])
    ] * 2


def test_signup_refuses_an_e_mail_already_used_in_another_case(users: dict[str, User]) -> None:
    response = Client().post(
        reverse("accounts:signup"),
        {
            "username": "alice2",
            "email": "ALICE@Example.org",
            "password1": PASSWORD,
            "password2": PASSWORD,
        },
    )
    # Before: a second account got the same address (and its password resets).
    assert response.status_code == 200 and not User.objects.filter(username="alice2").exists()
    assert "already uses this e-mail address" in response.content.decode()


def test_two_renewals_of_an_expired_token_at_once_both_get_the_new_one(
    users: dict[str, User], settings: Any, monkeypatch: Any
) -> None:
    from api import auth

    settings.API_TOKEN_TTL_S = 3600
    old = Token.objects.create(user=users["submitter"])
    Token.objects.filter(pk=old.pk).update(created=timezone.now() - timedelta(hours=2))
    issued: list[str] = []
    real_expired = auth.token_expired

    def another_request_renews_first(token: Token, **kwargs: Any) -> bool:
        expired = real_expired(token, **kwargs)
        if expired and not issued:  # the other request deletes and re-issues now
            Token.objects.filter(pk=token.pk).delete()
            issued.append(Token.objects.create(user=users["submitter"]).key)
        return expired

    monkeypatch.setattr(auth, "token_expired", another_request_renews_first)
    response = Client().post("/api/token/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 200, response.content
    assert response.json()["token"] == issued[0] != old.key
    assert Token.objects.filter(user=users["submitter"]).count() == 1


def test_signup_answers_whether_an_address_is_taken_only_so_often(
    users: dict[str, User], settings: Any
) -> None:
    settings.SIGNUP_TAKEN_MAX_PER_IP = 2
    bob, alice = users["other"].email, users["submitter"].email

    def attempt(ip: str, name: str, email: str) -> Any:
        form = {"username": name, "email": email, "password1": PASSWORD, "password2": PASSWORD}
        return Client(REMOTE_ADDR=ip).post(reverse("accounts:signup"), form)

    prober = "2001:db8:0:1::10"
    # One's own address again and again (a person retrying) counts once.
    for _ in range(3):
        answer = attempt(prober, "probe", bob.upper())
        assert answer.status_code == 200
        assert "already uses this e-mail address" in answer.content.decode()
    assert attempt(prober, "probe", alice).status_code == 200  # a second address
    # Before: any number of addresses could be tested. Now every sign-up from
    # that network is refused until the window ends, a free address as much
    # as a taken one, so the answer no longer tells which; the neighbours in
    # its IPv6 /64 with it.
    for ip, email in ((prober, bob), (prober, "free@example.org"), ("2001:db8:0:1::99", bob)):
        refused = attempt(ip, "probe9", email)
        assert refused.status_code == 429
        assert "already uses" not in refused.content.decode()
        assert "Too many sign-ups with e-mail addresses" in refused.content.decode()
    assert not User.objects.filter(username__startswith="probe").exists()
    # Another network is not affected.
    assert attempt("2001:db8:0:2::10", "fresh", "fresh@example.org").status_code == 302


def test_signup_is_rate_limited_per_address(users: dict[str, User], settings: Any) -> None:
    settings.SIGNUP_MAX_PER_IP = 2
    codes = []
    for i in range(3):
        form = {
            "username": f"new{i}",
            "email": f"new{i}@example.org",
            "password1": PASSWORD,
            "password2": PASSWORD,
        }
        codes.append(Client(REMOTE_ADDR="10.1.0.9").post(reverse("accounts:signup"), form))
    # Before: any number of accounts from one address, each with its own
    # upload quotas.
    assert [r.status_code for r in codes] == [302, 302, 429]
    assert "Too many accounts" in codes[2].content.decode()
    assert not User.objects.filter(username="new2").exists()
    # Another address is not affected, and a refused form (taken name) costs nothing.
    other = Client(REMOTE_ADDR="10.1.0.10")
    taken = {
        "username": "new0",
        "email": "x@example.org",
        "password1": PASSWORD,
        "password2": PASSWORD,
    }
    assert other.post(reverse("accounts:signup"), taken).status_code == 200
    form = {
        "username": "new3",
        "email": "new3@example.org",
        "password1": PASSWORD,
        "password2": PASSWORD,
    }
    assert other.post(reverse("accounts:signup"), form).status_code == 302
    assert (
        Client(REMOTE_ADDR="10.1.0.10")
        .post(reverse("accounts:signup"), {**form, "username": "new4", "email": "new4@example.org"})
        .status_code
        == 302
    )
