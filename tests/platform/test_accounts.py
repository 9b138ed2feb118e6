"""Accounts: sign up, roles, throttled log-in, password reset by e-mail, demo accounts."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth.models import User
from django.core import mail, signing
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from accounts import verification
from accounts.roles import role_of
from accounts.views import RESEND_MAX_PER_HOUR
from tests.platform.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def test_signup_creates_a_signed_in_submitter(site) -> None:
    c = Client()
    response = c.post(
        reverse("accounts:signup"),
        {
            "username": "carol",
            "email": "c@example.org",
            "password1": PASSWORD,
            "password2": PASSWORD,
        },
    )
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


def test_a_lockout_lasts_its_whole_window_from_the_failure_that_locked(
    settings, monkeypatch
) -> None:
    """Before, the lock ended when the window opened by the first attempt
    did: four failures just before it closed locked the pair for seconds."""
    import time

    from django.core.cache import cache

    from accounts import throttle

    cache.clear()
    settings.LOGIN_MAX_FAILURES, settings.LOGIN_LOCKOUT_S = 3, 900
    now = [10_000.0]
    monkeypatch.setattr(time, "time", lambda: now[0])  # the local-memory cache's clock
    assert throttle.begin_attempt("alice", "10.0.0.9")
    now[0] += 895
    assert throttle.begin_attempt("alice", "10.0.0.9")
    assert throttle.begin_attempt("alice", "10.0.0.9")  # the third: locked after it
    assert not throttle.begin_attempt("alice", "10.0.0.9")
    now[0] += 10  # past the first attempt's window, not the lock's
    assert throttle.is_locked("alice", "10.0.0.9")
    assert not throttle.begin_attempt("alice", "10.0.0.9")
    now[0] += 900
    assert not throttle.is_locked("alice", "10.0.0.9")
    assert throttle.begin_attempt("alice", "10.0.0.9")
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
        {
            "old_password": PASSWORD,
            "new_password1": "An0ther-long-pass",
            "new_password2": "An0ther-long-pass",
        },
    )
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
    url = reverse("accounts:password_reset")
    known = Client().post(url, {"email": "alice@example.org"}, follow=True)
    unknown = Client().post(url, {"email": "nobody@example.org"}, follow=True)
    assert len(mail.outbox) == 1
    assert known.redirect_chain == unknown.redirect_chain and known.redirect_chain
    assert known.status_code == unknown.status_code == 200
    assert known.content == unknown.content


def test_signup_refuses_a_weak_password(site) -> None:
    response = Client().post(
        reverse("accounts:signup"),
        {
            "username": "dave",
            "email": "d@example.org",
            "password1": "12345678",
            "password2": "12345678",
        },
    )
    assert response.status_code == 200 and not User.objects.filter(username="dave").exists()
    assert "too common" in response.content.decode()


def test_demo_accounts_leave_an_operators_account_of_the_same_name_alone(capsys, settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    settings.DEBUG = True
    own = User.objects.create_superuser("admin", "ops@example.org", "operators-own-pass-1")
    # Holding a fixture id too: loaddata would have overwritten this account.
    User.objects.create_user("someone", "s@example.org", "x-pass-12345", id=1001)
    # Before: loaddata failed on the taken name and `make run` stopped with a traceback.
    call_command("demo_accounts")
    out = capsys.readouterr().out
    own.refresh_from_db()
    assert own.check_password("operators-own-pass-1") and own.email == "ops@example.org"
    assert "admin" in out and "left as it is" in out and "admin-demo-2026" not in out
    assert User.objects.get(pk=1001).username == "someone"
    roles = {u.username: role_of(u) for u in User.objects.all()}
    assert roles["submitter"] == "submitter" and roles["moderator"] == "moderator"
    # Run again (make run does, every time): the demo accounts are reset, nothing else moves.
    User.objects.filter(username="moderator").update(is_active=False)
    call_command("demo_accounts")
    assert User.objects.get(username="moderator").is_active
    assert User.objects.filter(username="moderator").count() == 1


def test_demo_accounts_are_refused_outside_local_runs(settings) -> None:
    from django.core.management.base import CommandError

    settings.DEBUG = False
    with pytest.raises(CommandError, match="local runs only"):
        call_command("demo_accounts")
    assert not User.objects.exists()


# --- e-mail verification ------------------------------------------------------------


def _sign_up(c: Client, name: str = "carol") -> User:
    response = c.post(
        reverse("accounts:signup"),
        {
            "username": name,
            "email": f"{name}@example.org",
            "password1": PASSWORD,
            "password2": PASSWORD,
        },
    )
    assert response.status_code == 302
    return User.objects.get(username=name)


def _link_path(message: mail.EmailMessage) -> str:
    link = next(w for w in message.body.split() if "/accounts/verify/" in w)
    return "/" + link.split("://", 1)[-1].split("/", 1)[1]


def _old_token(user: User, age_s: int) -> str:
    """A verification token signed ``age_s`` seconds ago."""

    class Past(signing.TimestampSigner):
        def timestamp(self) -> str:
            return signing.b62_encode(int(time.time()) - age_s)

    return Past(salt=verification.SALT).sign_object({"u": user.pk, "e": user.email})


def test_signup_mails_a_verification_link_and_the_account_shows_unverified(site) -> None:
    c = Client()
    user = _sign_up(c)
    assert [m.to for m in mail.outbox] == [["carol@example.org"]]
    assert "/accounts/verify/" in mail.outbox[0].body
    assert not verification.is_verified(user)
    # Unverified accounts may use the site...
    assert c.get(reverse("analyses:list")).status_code == 200
    page = c.get(reverse("accounts:account")).content.decode()
    # ...and their account page says the address is not verified.
    assert "carol@example.org" in page and "(not verified)" in page and 'id="resend"' in page


def test_verification_link_verifies_the_address_once(site) -> None:
    c = Client()
    user = _sign_up(c)
    path = _link_path(mail.outbox[0])
    # Opening the link (a mail scanner does) changes nothing; its button verifies.
    shown = c.get(path)
    assert shown.status_code == 200 and "Verify carol@example.org" in shown.content.decode()
    assert not verification.is_verified(user)
    done = c.post(path)
    assert done.status_code == 200 and "carol@example.org is verified" in done.content.decode()
    assert verification.is_verified(user)
    assert "(verified)" in c.get(reverse("accounts:account")).content.decode()
    # Already used: said so, from another browser too, and nothing changes.
    again = Client().post(path)
    assert again.status_code == 200 and "was used already" in again.content.decode()


def test_expired_verification_link_is_refused(site, settings) -> None:
    user = _sign_up(Client())
    age = settings.EMAIL_VERIFICATION_MAX_AGE_S + 60
    path = reverse("accounts:verify_email", args=[_old_token(user, age)])
    response = Client().post(path)
    assert response.status_code == 400 and "has expired" in response.content.decode()
    assert not verification.is_verified(user)
    # The same link a minute inside its lifetime works.
    fresh = _old_token(user, settings.EMAIL_VERIFICATION_MAX_AGE_S - 60)
    assert Client().post(reverse("accounts:verify_email", args=[fresh])).status_code == 200
    assert verification.is_verified(user)


def test_tampered_verification_link_is_refused(site) -> None:
    c = Client()
    user = _sign_up(c)
    other = _sign_up(Client(), "mallory")
    token = _link_path(mail.outbox[1]).rstrip("/").rsplit("/", 1)[-1]
    payload, stamp, signature = token.split(":")
    # mallory's link rewritten to name carol's account, mallory's signature kept...
    carol = signing.dumps({"u": user.pk, "e": user.email}, salt=verification.SALT)
    forged = ":".join((carol.split(":")[0], stamp, signature))
    # ...and mallory's own link with its signature altered.
    altered = ":".join((payload, stamp, signature[:-1] + ("A" if signature[-1] != "A" else "B")))
    for bad in (forged, altered):
        response = c.post(reverse("accounts:verify_email", args=[bad]))
        assert response.status_code == 400 and "not valid" in response.content.decode()
    assert not verification.is_verified(user) and not verification.is_verified(other)


def test_verification_link_for_a_changed_address_is_refused(site) -> None:
    c = Client()
    user = _sign_up(c)
    path = _link_path(mail.outbox[0])
    user.email = "elsewhere@example.org"
    user.save()
    assert c.post(path).status_code == 400
    assert not verification.is_verified(user)


def test_password_reset_goes_only_to_verified_addresses(site) -> None:
    c = Client()
    user = _sign_up(c)
    path = _link_path(mail.outbox[0])
    mail.outbox.clear()
    Client().post(reverse("accounts:password_reset"), {"email": "carol@example.org"})
    # Not verified: a new verification link, no reset link.
    assert len(mail.outbox) == 1 and "/accounts/verify/" in mail.outbox[0].body
    assert "/accounts/reset/" not in mail.outbox[0].body
    c.post(path)
    assert verification.is_verified(user)
    mail.outbox.clear()
    Client().post(reverse("accounts:password_reset"), {"email": "carol@example.org"})
    assert len(mail.outbox) == 1 and "/accounts/reset/" in mail.outbox[0].body


def test_account_page_sends_a_new_link_a_few_times_an_hour(site) -> None:
    from django.core.cache import cache

    cache.clear()
    c = Client()
    _sign_up(c)
    for _ in range(RESEND_MAX_PER_HOUR):
        c.post(reverse("accounts:account"))
    assert len(mail.outbox) == 1 + RESEND_MAX_PER_HOUR
    refused = c.post(reverse("accounts:account"), follow=True).content.decode()
    assert "Too many verification e-mails" in refused and len(mail.outbox) == 4
    cache.clear()


def test_accounts_created_by_operators_count_as_verified(users, settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    settings.DEBUG = True
    call_command("demo_accounts")
    for name in ("submitter", "moderator", "admin"):
        assert verification.is_verified(User.objects.get(username=name))
    c = Client()
    c.force_login(User.objects.get(username="submitter"))
    page = c.get(reverse("accounts:account")).content.decode()
    assert "(verified)" in page and 'id="resend"' not in page
    # Like users made with create_user (the admin, createsuperuser).
    assert verification.is_verified(users["submitter"])


def test_one_address_one_account_is_kept_by_the_database_too(site, monkeypatch) -> None:
    """Two sign-ups posted at once both passed the form's check (the other's
    row did not exist yet) and made two accounts for one address; a reset
    for it then mailed links for both. The database refuses the second, and
    the form says why instead of failing."""
    from django.db import IntegrityError, transaction

    from accounts.forms import SignUpForm

    User.objects.create_user("first", "Shared@Example.org", PASSWORD)
    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.create_user("second", "shared@example.ORG", PASSWORD)
    # Accounts without an address (createsuperuser's) are not each other's duplicates.
    User.objects.create_user("root1", "", PASSWORD)
    User.objects.create_user("root2", "", PASSWORD)

    # The race: the form's check ran before the other sign-up's row existed.
    original = SignUpForm.clean_email
    calls = 0

    def late_check(form: SignUpForm) -> str:
        nonlocal calls
        calls += 1
        return str(form.cleaned_data["email"]).strip() if calls == 1 else original(form)

    monkeypatch.setattr(SignUpForm, "clean_email", late_check)
    response = Client().post(
        reverse("accounts:signup"),
        {
            "username": "racer",
            "email": "SHARED@example.org",
            "password1": PASSWORD,
            "password2": PASSWORD,
        },
    )
    assert response.status_code == 200
    assert "already uses this e-mail address" in response.content.decode()
    assert not User.objects.filter(username="racer").exists()
    assert User.objects.filter(email__iexact="shared@example.org").count() == 1
    assert calls == 2  # checked again after the refused insert


def test_the_admin_refuses_an_address_another_account_has(users, clients) -> None:
    """Django's own user form does not know the unique index: saving another
    account's address (in another case) was an IntegrityError, a 500 page."""
    alice, bob = users["submitter"], users["moderator"]
    url = reverse("admin:auth_user_change", args=[bob.pk])
    form = {
        "username": bob.username,
        "email": alice.email.upper(),
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        "is_active": "on",
    }
    answer = clients["admin"].post(url, form)
    assert answer.status_code == 200
    assert "Another account already uses this e-mail address" in answer.content.decode()
    bob.refresh_from_db()
    assert bob.email.lower() != alice.email.lower()
    form["email"] = "bob-new@example.org"
    assert clients["admin"].post(url, form).status_code == 302
    bob.refresh_from_db()
    assert bob.email == "bob-new@example.org"
