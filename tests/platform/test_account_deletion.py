"""A user deletes their own account: every upload with its files goes, other
users' work stays, the audit log keeps its rows; a wrong password, an
administrator or a moderator with decisions deletes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from rest_framework.authtoken.models import Token

from analyses import services
from analyses.models import Submission
from moderation.models import Decision, Report
from moderation.services import decide, file_report
from tests.platform.conftest import PASSWORD

pytestmark = pytest.mark.django_db
URL = reverse("accounts:delete_account")


def _files(sub: Submission) -> list[Path]:
    return [Path(sub.file.path), services.artifact_dir(sub)]


def test_a_user_deletes_their_account_with_every_upload_and_its_files(
    clients: dict[str, Any],
    users: dict[str, User],
    finished: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    alice, bob = users["submitter"], users["other"]
    mine = [finished(alice, title="one"), finished(alice, title="two")]
    theirs = finished(bob, title="bob's")
    file_report(mine[0], alice, "that is me")
    decide(mine[0], users["moderator"], "override_real", "checked with the source")
    Token.objects.create(user=alice)
    paths = [p for sub in mine for p in _files(sub)]
    assert all(p.exists() for p in paths)
    page = clients["submitter"].get(URL)
    text = page.content.decode()
    assert page.status_code == 200
    assert "your 2 uploads" in text and "your 1 request for review" in text
    assert "Delete my account and my 2 uploads" in text
    session_before = clients["submitter"].session.session_key
    with django_capture_on_commit_callbacks(execute=True):
        done = clients["submitter"].post(URL, {"password": PASSWORD}, follow=True)
    assert done.redirect_chain[-1][0] == reverse("accounts:login")
    assert "The account alice and its 2 uploads were deleted." in done.content.decode()
    # Signed out: the session is flushed, not only pointing at a missing user.
    assert clients["submitter"].session.session_key != session_before
    assert "_auth_user_id" not in clients["submitter"].session
    assert not User.objects.filter(username="alice").exists()
    assert not Submission.objects.filter(owner_id=alice.pk).exists()
    assert not Report.objects.filter(reporter_id=alice.pk).exists()
    assert not Token.objects.filter(user_id=alice.pk).exists()
    assert not any(p.exists() for p in paths)
    # Signed out, and someone else's work untouched.
    assert clients["submitter"].get(reverse("analyses:list")).status_code == 302
    assert Submission.objects.filter(pk=theirs.pk).exists()
    assert all(p.exists() for p in _files(theirs))
    # The audit log keeps its row, naming the deleted upload by id and hash.
    row = Decision.objects.get(note="checked with the source")
    assert row.submission_id is None and row.moderator_id == users["moderator"].pk


def test_a_wrong_password_deletes_nothing(
    clients: dict[str, Any], users: dict[str, User], finished: Any
) -> None:
    sub = finished(users["submitter"])
    refused = clients["submitter"].post(URL, {"password": "not it"})
    assert refused.status_code == 400
    assert "not your password; nothing was deleted" in refused.content.decode()
    assert User.objects.filter(pk=users["submitter"].pk).exists()
    assert Submission.objects.filter(pk=sub.pk).exists() and Path(sub.file.path).exists()
    assert clients["submitter"].get(reverse("analyses:list")).status_code == 200  # still signed in


@pytest.mark.parametrize("who", ["admin", "moderator"])
def test_an_administrator_or_a_moderator_with_decisions_cannot_delete_themselves(
    clients: dict[str, Any], users: dict[str, User], finished: Any, who: str
) -> None:
    if who == "moderator":
        decide(finished(users["submitter"]), users["moderator"], "confirm", "")
    page = clients[who].get(URL)
    assert page.status_code == 200 and 'id="blocked"' in page.content.decode()
    assert 'id="delete-form"' not in page.content.decode()
    refused = clients[who].post(URL, {"password": PASSWORD})
    assert refused.status_code == 403
    why = {"admin": "deleted by another administrator", "moderator": "the audit log keeps"}
    assert why[who] in refused.content.decode()
    assert User.objects.filter(pk=users[who].pk).exists()


def test_a_decision_made_while_the_uploads_are_deleted_stops_at_the_account(
    clients: dict[str, Any], users: dict[str, User], finished: Any, monkeypatch: Any
) -> None:
    """A moderator deletes their account in one tab and decides in another:
    the audit log protects the account, so it stays (a 403 saying why, not a
    500), while the uploads already deleted are gone."""
    from analyses import services as analyses_services

    mona = users["moderator"]
    own = finished(mona, title="mona's")
    real_delete = analyses_services.delete_submission

    def delete_and_decide_elsewhere(sub: Submission) -> None:
        real_delete(sub)
        decide(finished(users["submitter"]), mona, "confirm", "")

    monkeypatch.setattr(analyses_services, "delete_submission", delete_and_decide_elsewhere)
    refused = clients["moderator"].post(URL, {"password": PASSWORD})
    assert refused.status_code == 403 and "the audit log keeps" in refused.content.decode()
    assert User.objects.filter(pk=mona.pk).exists()
    assert not Submission.objects.filter(pk=own.pk).exists()


def test_wrong_passwords_count_against_the_log_in_throttle(
    clients: dict[str, Any], users: dict[str, User], settings: Any
) -> None:
    """A stolen session cannot guess the password through this form (nor
    through the password change form)."""
    settings.LOGIN_MAX_FAILURES = 3
    for _ in range(3):
        assert clients["submitter"].post(URL, {"password": "guess"}).status_code == 400
    locked = clients["submitter"].post(URL, {"password": PASSWORD})
    assert locked.status_code == 429 and "Too many wrong passwords" in locked.content.decode()
    assert User.objects.filter(pk=users["submitter"].pk).exists()
    change = clients["submitter"].post(
        reverse("accounts:password_change"),
        {
            "old_password": PASSWORD,
            "new_password1": "n3w-Secret-2026",
            "new_password2": "n3w-Secret-2026",
        },
    )
    assert change.status_code == 200 and "Too many failed log-ins" in change.content.decode()
    assert User.objects.get(pk=users["submitter"].pk).check_password(PASSWORD)


def test_an_account_without_uploads_is_deleted_without_counting_them(
    clients: dict[str, Any], users: dict[str, User]
) -> None:
    page = clients["other"].get(URL).content.decode()
    assert (
        "Delete my account</button>" in page
        and "upload" not in page.split('id="what-goes"')[1].split("</ul>")[0]
    )
    done = clients["other"].post(URL, {"password": PASSWORD}, follow=True)
    assert "The account bob was deleted." in done.content.decode()
    assert not User.objects.filter(pk=users["other"].pk).exists()


def test_a_moderator_who_never_decided_may_delete_their_account(
    clients: dict[str, Any], users: dict[str, User]
) -> None:
    assert clients["moderator"].post(URL, {"password": PASSWORD}).status_code == 302
    assert not User.objects.filter(pk=users["moderator"].pk).exists()


def test_deleting_an_account_needs_a_signed_in_user_and_a_post(
    clients: dict[str, Any], users: dict[str, User]
) -> None:
    anonymous = clients["anonymous"].post(URL, {"password": PASSWORD})
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    assert clients["submitter"].put(URL).status_code == 405
    assert User.objects.filter(pk=users["submitter"].pk).exists()
    account = clients["submitter"].get(reverse("accounts:account")).content.decode()
    assert f'href="{URL}"' in account
