"""Accounts: sign up, roles, throttled log-in, password reset by e-mail, demo accounts."""

from __future__ import annotations

import pytest
from accounts.roles import role_of
from django.contrib.auth.models import User
from django.core import mail
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from tests.platform.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def test_signup_creates_a_signed_in_submitter(site) -> None:
    c = Client()
    response = c.post(
        reverse("accounts:signup"),
        {"username": "carol", "email": "c@example.org", "password1": PASSWORD,
         "password2": PASSWORD},
    )  # fmt: skip
    assert response.status_code == 302
    assert role_of(User.objects.get(username="carol")) == "submitter"
    assert c.get(reverse("analyses:list")).status_code == 200


def test_login_is_throttled_per_username_and_ip(users, settings) -> None:
    from django.core.cache import cache

    cache.clear()
    settings.LOGIN_MAX_FAILURES = 3
    url = reverse("accounts:login")
    c = Client(REMOTE_ADDR="10.0.0.1")
    for _ in range(3):
        assert c.post(url, {"username": "alice", "password": "wrong"}).status_code == 200
    locked = c.post(url, {"username": "alice", "password": PASSWORD})
    assert locked.status_code == 200 and "Too many failed log-ins" in locked.content.decode()
    other_ip = Client(REMOTE_ADDR="10.0.0.2")
    assert other_ip.post(url, {"username": "alice", "password": PASSWORD}).status_code == 302
    cache.clear()


def test_password_reset_sends_a_mail_with_a_working_link(users) -> None:
    c = Client()
    c.post(reverse("accounts:password_reset"), {"email": "alice@example.org"})
    assert len(mail.outbox) == 1
    link = next(w for w in mail.outbox[0].body.split() if "/accounts/reset/" in w)
    path = link.split("://", 1)[-1].split("/", 1)[1]
    response = c.get("/" + path, follow=True)
    assert response.status_code == 200 and b"new_password1" in response.content


def test_password_change(users, clients) -> None:
    response = clients["submitter"].post(
        reverse("accounts:password_change"),
        {"old_password": PASSWORD, "new_password1": "An0ther-long-pass",
         "new_password2": "An0ther-long-pass"},
    )  # fmt: skip
    assert response.status_code == 302
    assert User.objects.get(username="alice").check_password("An0ther-long-pass")


def test_demo_accounts_load_with_one_of_each_role(capsys, settings) -> None:
    # The fixture's hashes are PBKDF2 (the test settings hash with MD5 for speed).
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    settings.DEBUG = True  # local runs only
    call_command("demo_accounts")
    out = capsys.readouterr().out
    roles = {u.username: role_of(u) for u in User.objects.all()}
    assert roles == {"submitter": "submitter", "moderator": "moderator", "admin": "admin"}
    assert "password submit-demo-2026" in out and "moderator" in out


@pytest.mark.parametrize("variant", ["ALICE", " alice ", "ａｌｉｃｅ"])
def test_throttle_counts_case_whitespace_and_width_variants_as_one_user(
    users, settings, variant
) -> None:
    from django.core.cache import cache

    cache.clear()
    settings.LOGIN_MAX_FAILURES = 2
    url = reverse("accounts:login")
    c = Client(REMOTE_ADDR="10.0.0.3")
    for name in ("alice", variant):
        assert c.post(url, {"username": name, "password": "wrong"}).status_code == 200
    # The correct password no longer helps, whichever spelling is used.
    locked = c.post(url, {"username": "alice", "password": PASSWORD})
    assert "Too many failed log-ins" in locked.content.decode()
    cache.clear()


def test_password_reset_answers_the_same_for_unknown_addresses(users) -> None:
    c = Client()
    known = c.post(reverse("accounts:password_reset"), {"email": "alice@example.org"})
    unknown = c.post(reverse("accounts:password_reset"), {"email": "nobody@example.org"})
    assert len(mail.outbox) == 1
    assert (known.status_code, known["Location"]) == (unknown.status_code, unknown["Location"])
    done_known = c.get(known["Location"]).content
    assert done_known == c.get(unknown["Location"]).content


def test_signup_refuses_a_weak_password(site) -> None:
    response = Client().post(
        reverse("accounts:signup"),
        {"username": "dave", "email": "d@example.org", "password1": "12345678",
         "password2": "12345678"},
    )  # fmt: skip
    assert response.status_code == 200 and not User.objects.filter(username="dave").exists()
    assert "too common" in response.content.decode()


def test_demo_accounts_are_refused_outside_local_runs(settings) -> None:
    from django.core.management.base import CommandError

    settings.DEBUG = False
    with pytest.raises(CommandError, match="local runs only"):
        call_command("demo_accounts")
    assert not User.objects.exists()
