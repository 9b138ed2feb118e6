"""Per-user limits, an earlier result offered for the same file, the API's
request rate and the mode of stored uploads (issue 17)."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from analyses import services
from analyses.models import Status, Submission
from tests.platform.conftest import upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def quiet_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services.queue, "enqueue", lambda sub: None)


def _limits(settings: Any, **values: int) -> None:
    settings.TRUSTTRACE = {**settings.TRUSTTRACE, **values}


def _api(user: User) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


def test_uploads_are_stored_with_the_configured_mode(
    site: Path, users: dict[str, User], media_dir: Path, quiet_queue: None
) -> None:
    sub = services.create_submission(users["submitter"], upload(media_dir / "face.png"))
    # Before: 0644 (open() under the usual umask), not FILE_UPLOAD_PERMISSIONS.
    assert stat.S_IMODE(Path(sub.file.path).stat().st_mode) == 0o640


def test_too_many_waiting_analyses_are_refused_with_429(
    site: Path,
    users: dict[str, User],
    clients: dict[str, Client],
    media_dir: Path,
    settings: Any,
    quiet_queue: None,
) -> None:
    _limits(settings, MAX_PENDING_PER_USER=2)
    for _ in range(2):
        services.create_submission(users["submitter"], upload(media_dir / "face.png"))
    with (media_dir / "face.png").open("rb") as fh:
        response = clients["submitter"].post(reverse("analyses:submit"), {"file": fh})
    # Before: no limit; one user could fill the FIFO queue.
    assert response.status_code == 429
    assert "2 analyses waiting or running; the limit is 2" in response.content.decode()
    assert Submission.objects.count() == 2
    # Someone else's queue is theirs.
    services.create_submission(users["other"], upload(media_dir / "face.png"))
    # A finished job frees its place.
    Submission.objects.filter(owner=users["submitter"]).update(status=Status.DONE)
    services.create_submission(users["submitter"], upload(media_dir / "face.png"))


def test_uploads_per_hour_are_limited(
    site: Path, users: dict[str, User], media_dir: Path, settings: Any, quiet_queue: None
) -> None:
    _limits(settings, MAX_UPLOADS_PER_HOUR=2, MAX_PENDING_PER_USER=0)
    for _ in range(2):
        services.create_submission(users["submitter"], upload(media_dir / "face.png"))
    with pytest.raises(services.QuotaExceeded, match="2 files in the last hour"):
        services.create_submission(users["submitter"], upload(media_dir / "face.png"))


def test_deleting_uploads_does_not_make_room_under_the_hourly_limit(
    site: Path,
    users: dict[str, User],
    clients: dict[str, Client],
    media_dir: Path,
    settings: Any,
    quiet_queue: None,
) -> None:
    """Each upload cost a probe whether or not it is kept: before, an account
    that deleted what it uploaded (the site's delete button, or the API's
    DELETE) was never limited."""
    _limits(settings, MAX_UPLOADS_PER_HOUR=2, MAX_PENDING_PER_USER=0)
    first = services.create_submission(users["submitter"], upload(media_dir / "face.png"))
    services.delete_submission(first)
    second = services.create_submission(users["submitter"], upload(media_dir / "face.png"))
    api = clients["submitter"].delete(f"/api/submissions/{second.pk}/")
    assert api.status_code == 204
    assert not Submission.objects.filter(owner=users["submitter"]).exists()
    with pytest.raises(
        services.QuotaExceeded, match=r"2 files in the last hour \(2 of them refused, answered"
    ):
        services.create_submission(users["submitter"], upload(media_dir / "face.png"))


def test_refused_uploads_count_against_the_hourly_limit(
    site: Path,
    users: dict[str, User],
    clients: dict[str, Client],
    media_dir: Path,
    settings: Any,
    tmp_path: Path,
    quiet_queue: None,
) -> None:
    """A refused file stores nothing but costs a probe: before, an account
    could send bad files without end."""
    from tests import media_factory as mf

    _limits(settings, MAX_UPLOADS_PER_HOUR=3, MAX_PENDING_PER_USER=0)
    bad = mf.text_as_mp4(tmp_path / "notes.mp4")
    url = reverse("analyses:submit")
    for _ in range(2):
        with bad.open("rb") as fh:
            assert clients["submitter"].post(url, {"file": fh}).status_code == 400
    services.create_submission(users["submitter"], upload(media_dir / "face.png"))
    with pytest.raises(
        services.QuotaExceeded, match=r"3 files in the last hour \(2 of them refused, answered"
    ):
        services.create_submission(users["submitter"], upload(media_dir / "face.png"))
    # Another user's count is their own.
    services.create_submission(users["moderator"], upload(media_dir / "face.png"))


def test_reused_results_count_hourly_but_not_against_pending_or_storage(
    site: Path, users: dict[str, User], media_dir: Path, settings: Any, finished: Any
) -> None:
    """Each reuse costs a probe (before: free, so without end), but stores
    nothing (before: refused once the pending or storage quota was full)."""
    finished(users["submitter"])  # a done analysis of face.png to reuse
    _limits(settings, MAX_UPLOADS_PER_HOUR=3, MAX_PENDING_PER_USER=1, MAX_STORAGE_PER_USER_BYTES=1)
    submit = services.uploads.submit
    for _ in range(2):
        _, was_reused = submit(users["submitter"], upload(media_dir / "face.png"), reuse=True)
        assert was_reused
    with pytest.raises(services.QuotaExceeded, match="2 of them refused, answered"):
        submit(users["submitter"], upload(media_dir / "face.png"), reuse=True)
    # A reuse request with nothing to reuse is stored: then the other limits
    # apply, and a refusal after its probe is counted too (it cost one).
    cache.clear()
    with pytest.raises(services.QuotaExceeded, match="of storage"):
        submit(users["submitter"], upload(media_dir / "person.mp4"), reuse=True)
    assert Submission.objects.count() == 1  # nothing stored by the refused one
    assert services.quotas.refused_uploads(users["submitter"]) == 1


def test_quotas_are_checked_again_after_the_probe(
    site: Path,
    users: dict[str, User],
    media_dir: Path,
    settings: Any,
    monkeypatch: Any,
    quiet_queue: None,
) -> None:
    """Uploads sent at once all pass the check made before their probes
    (seconds each): the check is made again, under the owner's lock, before
    the row is saved. Here another upload is saved while this one is probed."""
    from analyses.services import uploads

    _limits(settings, MAX_PENDING_PER_USER=1)
    real = uploads._accept
    calls: list[int] = []

    def another_saved_meanwhile(upload_file: Any) -> Any:
        staged = real(upload_file)
        if not calls:
            calls.append(1)
            services.create_submission(users["submitter"], upload(media_dir / "person.mp4"))
        return staged

    monkeypatch.setattr(uploads, "_accept", another_saved_meanwhile)
    with pytest.raises(services.QuotaExceeded, match="waiting or running"):
        services.create_submission(users["submitter"], upload(media_dir / "face.png"))
    assert Submission.objects.count() == 1  # the one saved meanwhile
    stored = {p.name for p in (site / "uploads").rglob("*") if p.is_file()}
    assert stored == {Path(Submission.objects.get().file.name).name}  # no staged leftovers


def test_a_refusal_that_is_the_sites_fault_is_not_counted(
    site: Path, users: dict[str, User], settings: Any
) -> None:
    from analyses.services.quotas import note_unsaved_upload, refused_uploads

    _limits(settings, MAX_UPLOADS_PER_HOUR=3)
    note_unsaved_upload(users["submitter"], "storage_unavailable")
    assert refused_uploads(users["submitter"]) == 0
    note_unsaved_upload(users["submitter"], "unsupported_format")
    note_unsaved_upload(users["submitter"], "probe_timeout")
    # A decoder crash on the file costs a probe like a timeout does.
    note_unsaved_upload(users["submitter"], "probe_failed")
    assert refused_uploads(users["submitter"]) == 3


def test_storage_per_user_is_limited_on_the_api(
    site: Path, users: dict[str, User], media_dir: Path, settings: Any, quiet_queue: None
) -> None:
    size = (media_dir / "face.png").stat().st_size
    _limits(settings, MAX_STORAGE_PER_USER_BYTES=size + size // 2)
    services.create_submission(users["submitter"], upload(media_dir / "face.png"))
    with (media_dir / "face.png").open("rb") as fh:
        response = _api(users["submitter"]).post(
            "/api/submissions/", {"file": fh}, format="multipart"
        )
    assert response.status_code == 429 and response.json()["code"] == "quota_storage"
    assert "Delete old submissions" in response.json()["detail"]


def test_reference_files_count_against_the_storage_quota(
    site: Path, users: dict[str, User], media_dir: Path, settings: Any, quiet_queue: None
) -> None:
    """Before, only the main files were summed: references (up to the upload
    limit each) were stored without counting."""
    image, clip = (media_dir / "face.png").stat().st_size, (media_dir / "person.mp4").stat().st_size
    sub = services.create_submission(
        users["submitter"],
        upload(media_dir / "person.mp4"),
        reference=upload(media_dir / "face.png"),
    )
    assert (sub.size_bytes, sub.reference_size_bytes) == (clip, image)
    # Room for one more clip on its own, not once the reference is counted.
    _limits(settings, MAX_STORAGE_PER_USER_BYTES=2 * clip + image // 2)
    with pytest.raises(services.QuotaExceeded, match="of storage"):
        services.create_submission(users["submitter"], upload(media_dir / "person.mp4"))
    _limits(settings, MAX_STORAGE_PER_USER_BYTES=2 * clip + image)
    services.create_submission(users["submitter"], upload(media_dir / "person.mp4"))


@pytest.mark.django_db(transaction=True)
def test_the_migration_fills_the_reference_size_of_stored_submissions(
    site: Path, settings: Any
) -> None:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before = [("analyses", "0004_submission_provenance")]
    after = [("analyses", "0005_submission_reference_size_bytes")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    user = old.get_model("auth", "User").objects.create(username="q")
    (Path(settings.MEDIA_ROOT) / "uploads").mkdir(parents=True, exist_ok=True)
    (Path(settings.MEDIA_ROOT) / "uploads" / "ref.png").write_bytes(b"x" * 1234)
    rows = old.get_model("analyses", "Submission").objects
    kept = rows.create(owner=user, kind="video", sha256="a" * 64, reference_file="uploads/ref.png")
    gone = rows.create(owner=user, kind="video", sha256="b" * 64, reference_file="uploads/gone.png")
    none = rows.create(owner=user, kind="image", sha256="c" * 64)
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(after)
    new = executor.loader.project_state(after).apps.get_model("analyses", "Submission")
    sizes = dict(new.objects.values_list("pk", "reference_size_bytes"))
    assert sizes == {kept.pk: 1234, gone.pk: 0, none.pk: 0}
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


def test_an_earlier_result_of_the_same_file_is_offered_not_forced(
    site: Path,
    users: dict[str, User],
    clients: dict[str, Client],
    media_dir: Path,
    finished: Any,
    quiet_queue: None,
) -> None:
    earlier = finished(users["submitter"])
    url = reverse("analyses:submit")
    with (media_dir / "face.png").open("rb") as fh:
        reused = clients["submitter"].post(url, {"file": fh, "reuse": "on"})
    # Before: the same file was always analysed again.
    assert reused.status_code == 302 and reused["Location"].endswith(f"/s/{earlier.pk}/")
    assert Submission.objects.count() == 1
    with (media_dir / "face.png").open("rb") as fh:
        again = clients["submitter"].post(url, {"file": fh})
    assert again.status_code == 302 and Submission.objects.count() == 2
    # Only the owner's own results are reused.
    with (media_dir / "face.png").open("rb") as fh:
        theirs = clients["other"].post(url, {"file": fh, "reuse": "on"})
    assert not theirs["Location"].endswith(f"/s/{earlier.pk}/")


def test_the_api_reuses_an_earlier_result_when_asked(
    site: Path, users: dict[str, User], media_dir: Path, finished: Any, quiet_queue: None
) -> None:
    earlier = finished(users["submitter"])
    api = _api(users["submitter"])
    with (media_dir / "face.png").open("rb") as fh:
        response = api.post("/api/submissions/", {"file": fh, "reuse": True}, format="multipart")
    assert response.status_code == 200 and response.json()["id"] == str(earlier.pk)
    with (media_dir / "face.png").open("rb") as fh:
        response = api.post("/api/submissions/", {"file": fh}, format="multipart")
    assert response.status_code == 201 and response.json()["id"] != str(earlier.pk)


def test_api_requests_are_rate_limited_per_user(
    users: dict[str, User], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rest_framework.throttling import UserRateThrottle

    monkeypatch.setattr(UserRateThrottle, "THROTTLE_RATES", {"user": "3/minute"})
    cache.clear()
    api = _api(users["submitter"])
    codes = [api.get("/api/submissions/").status_code for _ in range(4)]
    cache.clear()
    # Before: no throttle on the API.
    assert codes == [200, 200, 200, 429]
