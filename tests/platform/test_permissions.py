"""Every page and API endpoint against anonymous, submitter, another
submitter, moderator and admin. Another user's submission is 404, never 403."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token

pytestmark = pytest.mark.django_db

ROLES = ("anonymous", "submitter", "other", "moderator", "admin")
OWNED = {"submitter", "moderator", "admin"}  # may see alice's submission
LOGIN = "login"  # a redirect to the log-in page


def _expect(response: Any, expected: int | str) -> None:
    if expected == LOGIN:
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    else:
        assert response.status_code == expected, (response.status_code, expected)


def _sub_pages(sub: Any, art: Any) -> dict[str, str]:
    return {
        "detail": reverse("analyses:detail", args=[sub.pk]),
        "progress": reverse("analyses:progress", args=[sub.pk]),
        "file": reverse("analyses:file", args=[sub.pk]),
        "artifact": reverse("analyses:artifact", args=[sub.pk, art.pk]),
        "frames_csv": reverse("reports:frames", args=[sub.pk]),
    }


def test_submission_pages_matrix(clients: dict[str, Client], users, finished) -> None:
    sub = finished(users["submitter"])
    art = sub.artifacts.first()
    for name, url in _sub_pages(sub, art).items():
        for role in ROLES:
            response = clients[role].get(url)
            expected: int | str = LOGIN if role == "anonymous" else 200 if role in OWNED else 404
            _expect(response, expected)
            if name == "file" and expected == 200:
                assert response["Cache-Control"] == "private, no-store"
            if role != "anonymous":
                # Before: pages and progress.json had no Cache-Control, so a
                # shared cache or the back button after log-out could show them.
                assert "no-store" in response["Cache-Control"], (name, role)
                assert "private" in response["Cache-Control"], (name, role)


def test_general_pages_matrix(clients: dict[str, Client], users, site) -> None:
    everyone = dict.fromkeys(("submitter", "other", "moderator", "admin"), 200)
    mods_only = {"submitter": 404, "other": 404, "moderator": 200, "admin": 200}
    pages = {
        reverse("analyses:list"): everyone,
        reverse("analyses:submit"): everyone,
        reverse("reports:submissions"): everyone,
        reverse("moderation:queue"): mods_only,
        reverse("moderation:dashboard"): mods_only,
    }
    for url, by_role in pages.items():
        _expect(clients["anonymous"].get(url), LOGIN)
        for role, expected in by_role.items():
            response = clients[role].get(url)
            _expect(response, expected)
            assert "no-store" in response["Cache-Control"], (url, role)
    for role in ROLES:  # public pages
        _expect(clients[role].get(reverse("analyses:models")), 200)
        _expect(clients[role].get(reverse("api:schema")), 200)
    _expect(clients["anonymous"].get(reverse("accounts:login")), 200)
    _expect(clients["anonymous"].get(reverse("accounts:signup")), 200)
    for role in ("submitter", "other", "moderator"):
        _expect(clients[role].get(reverse("admin:index")), 302)
    _expect(clients["admin"].get(reverse("admin:index")), 200)


def test_post_actions_matrix(clients: dict[str, Client], users, finished, monkeypatch) -> None:
    from analyses import services

    monkeypatch.setattr(services.queue, "enqueue", lambda sub: None)
    for role in ROLES:
        sub = finished(users["submitter"])
        delete = clients[role].post(reverse("analyses:delete", args=[sub.pk]))
        _expect(delete, LOGIN if role == "anonymous" else 302 if role == "submitter" else 404)
        sub = finished(users["submitter"])
        report = clients[role].post(reverse("analyses:report", args=[sub.pk]), {"reason": "x"})
        _expect(report, LOGIN if role == "anonymous" else 302 if role == "submitter" else 404)
        for action in ("decide", "rerun"):
            url = reverse(f"moderation:{action}", args=[sub.pk])
            response = clients[role].post(url, {"action": "confirm"})
            allowed = role in ("moderator", "admin")
            _expect(response, LOGIN if role == "anonymous" else 302 if allowed else 404)
        review = clients[role].get(reverse("moderation:review", args=[sub.pk]))
        _expect(
            review, LOGIN if role == "anonymous" else 200 if role in ("moderator", "admin") else 404
        )


def _api(users: dict[str, Any]) -> dict[str, Client]:
    out = {"anonymous": Client()}
    for role, user in users.items():
        token = Token.objects.create(user=user)
        out[role] = Client(HTTP_AUTHORIZATION=f"Token {token.key}")
    return out


def test_api_matrix(users, finished) -> None:
    api = _api(users)
    sub = finished(users["submitter"])
    art = sub.artifacts.first()
    base = f"/api/submissions/{sub.pk}/"
    urls = [
        base,
        base + "progress/",
        base + "result/",
        base + "frames/",
        base + "artifacts/",
        base + "frames-csv/",
        base + f"artifacts/{art.pk}/file/",
        base + "index/",
    ]
    for url in urls:
        for role in ROLES:
            response = api[role].get(url)
            expected = 401 if role == "anonymous" else 200 if role in OWNED else 404
            assert response.status_code == expected, (url, role, response.status_code)
            if role != "anonymous":
                assert "no-store" in response["Cache-Control"], (url, role)
    for role in ROLES:
        listing = api[role].get("/api/submissions/")
        if role == "anonymous":
            assert listing.status_code == 401
            continue
        ids = {r["id"] for r in listing.json()["results"]}
        assert (str(sub.pk) in ids) == (role in OWNED)
        export = api[role].get("/api/submissions/export-csv/")
        assert export.status_code == 200
        text = b"".join(export.streaming_content).decode()
        exported = {row["id"] for row in csv.DictReader(io.StringIO(text))}
        assert (str(sub.pk) in exported) == (role in OWNED), role
    for role in ("other", "moderator", "admin"):  # only the owner deletes
        assert api[role].delete(base).status_code == 404
    assert api["anonymous"].delete(base).status_code == 401
    assert api["submitter"].delete(base).status_code == 204


def test_files_have_no_public_url_and_ids_cannot_be_mixed(
    clients: dict[str, Client], users, finished, media_dir
) -> None:
    from pathlib import Path

    from analyses import services
    from tests.platform.conftest import upload

    sub = finished(users["submitter"])
    ref_path, _ = services._accept(upload(media_dir / "face.png"))
    sub.reference_file.name = ref_path.relative_to(services._media_root()).as_posix()
    sub.save()
    theirs = finished(users["other"])
    reference = reverse("analyses:reference", args=[sub.pk])
    for role in ROLES:
        expected: int | str = LOGIN if role == "anonymous" else 200 if role in OWNED else 404
        _expect(clients[role].get(reference), expected)
        for name in (sub.file.name, sub.reference_file.name, sub.artifacts.first().file.name):
            for prefix in ("/media/", "/", "/static/"):
                assert clients[role].get(prefix + name).status_code == 404, (prefix, name)
    # Alice's submission id with Bob's artifact id (and the API form of it).
    mixed = reverse("analyses:artifact", args=[sub.pk, theirs.artifacts.first().pk])
    _expect(clients["submitter"].get(mixed), 404)
    token = Token.objects.create(user=users["submitter"])
    api = Client(HTTP_AUTHORIZATION=f"Token {token.key}")
    url = f"/api/submissions/{sub.pk}/artifacts/{theirs.artifacts.first().pk}/file/"
    assert api.get(url).status_code == 404
    # A refused delete leaves the submission and its files alone.
    _expect(clients["other"].post(reverse("analyses:delete", args=[sub.pk])), 404)
    assert Path(sub.file.path).is_file() and Path(sub.reference_file.path).is_file()
    assert services.artifact_dir(sub).is_dir()


def test_services_acting_for_a_user_get_the_signed_in_account_or_a_403(users) -> None:
    from django.contrib.auth.models import AnonymousUser
    from django.core.exceptions import PermissionDenied
    from django.utils.functional import SimpleLazyObject

    from accounts.roles import signed_in

    alice = users["submitter"]
    assert signed_in(alice) is alice
    # request.user is a lazy object around the account.
    assert signed_in(SimpleLazyObject(lambda: alice)).pk == alice.pk  # type: ignore[arg-type]
    with pytest.raises(PermissionDenied, match="Sign in first"):
        signed_in(AnonymousUser())


def test_the_admin_deletes_a_submission_with_its_files(
    clients, users, finished, django_capture_on_commit_callbacks
) -> None:
    from pathlib import Path

    from analyses import services
    from analyses.models import Artifact, Submission

    sub = finished(users["submitter"])
    admin = clients["admin"]
    # Read-only: shown, not changed.
    page = admin.get(f"/admin/analyses/submission/{sub.pk}/change/")
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    upload, folder = Path(sub.file.path), services.artifact_dir(sub)
    # Rows replaced by rows for the same files (the index loaded again) keep them.
    with django_capture_on_commit_callbacks(execute=True):
        services.load_index_file(sub, folder)
    assert all(Path(a.file.path).exists() for a in Artifact.objects.filter(submission=sub))
    # An explanation deleted alone takes its file (it used to stay, unlisted).
    artifact = Artifact.objects.filter(submission=sub).first()
    assert artifact is not None and Path(artifact.file.path).exists()
    with django_capture_on_commit_callbacks(execute=True):
        gone = admin.post(f"/admin/analyses/artifact/{artifact.pk}/delete/", {"post": "yes"})
    assert gone.status_code == 302 and not Artifact.objects.filter(pk=artifact.pk).exists()
    assert not Path(artifact.file.path).exists()
    with django_capture_on_commit_callbacks(execute=True):
        deleted = admin.post(f"/admin/analyses/submission/{sub.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 302
    assert not Submission.objects.filter(pk=sub.pk).exists()
    assert not Artifact.objects.filter(submission_id=sub.pk).exists()
    assert not upload.exists() and not folder.exists()
