"""Uploads are checked at the edge: every bad file is refused with its
reason, nothing is left on disk and other submissions are untouched."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from analyses.models import Submission
from tests import media_factory as mf
from tests.platform.conftest import upload

pytestmark = pytest.mark.django_db


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


BAD: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "empty.mp4": (lambda p, src: mf.empty_file(p), "The file is empty"),
    "truncated.mp4": (lambda p, src: mf.truncated_mp4(p, src), "corrupt"),
    "notes.mp4": (lambda p, src: mf.text_as_mp4(p), "it looks like a text file"),
    "huge.png": (lambda p, src: mf.huge_png_header(p), "megapixels"),
    "audio.mp4": (lambda p, src: mf.audio_only_mp4(p, 0.5), "audio"),
    "zero.mp4": (lambda p, src: mf.zero_frame_video(p), "no frames"),
    "song.mp4": (lambda p, src: mf.audio_only_mp4(p, 0.5, cover=True), "only audio and a cover"),
    "odd.avi": (lambda p, src: mf.unknown_codec_avi(p), "codec is not one this site can decode"),
    "strip.png": (lambda p, src: mf.strip_image(p, 65000, 1), "too small to hold a face"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_media_upload_is_refused_with_reason_and_nothing_kept(
    name: str, site: Path, clients, finished, users, media_dir: Path, tmp_path: Path
) -> None:
    other = finished(users["other"])
    before = _files_under(site)
    make, reason = BAD[name]
    path = make(tmp_path / name, media_dir / "person.mp4")
    with path.open("rb") as fh:
        response = clients["submitter"].post(reverse("analyses:submit"), {"file": fh})
    assert response.status_code == 400
    text = response.content.decode()
    assert "Upload refused" in text and reason.lower() in text.lower()
    assert _files_under(site) == before
    assert list(Submission.objects.values_list("pk", flat=True)) == [other.pk]
    other.refresh_from_db()
    assert other.status == "done" and Path(other.file.path).is_file()


@pytest.mark.parametrize(
    "error,reason",
    [(errno.ENOSPC, "no room left to store this file"), (errno.EIO, "fault of its storage")],
)
def test_a_disk_that_fails_while_the_upload_is_copied_keeps_no_partial_file(
    error: int,
    reason: str,
    site: Path,
    clients,
    finished,
    users,
    media_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The site's disk filling up (or failing) halfway through the copy into
    staging is the site's fault: 503 with a reason, no partial copy left in
    staging/ (nothing ever cleans it), not counted against the hourly limit.
    It was a bare 500 that left the partial file."""
    from django.core.files import File
    from django.core.files.uploadedfile import InMemoryUploadedFile

    from analyses.services.quotas import refused_uploads

    other = finished(users["other"])
    before = _files_under(site)

    def failing_chunks(self, chunk_size=None):
        self.seek(0)
        yield self.read(1024)
        raise OSError(error, os.strerror(error))

    for cls in (File, InMemoryUploadedFile):  # what the form's file reads through
        monkeypatch.setattr(cls, "chunks", failing_chunks)
    with (media_dir / "face.png").open("rb") as fh:
        response = clients["submitter"].post(reverse("analyses:submit"), {"file": fh})
    assert response.status_code == 503
    assert reason in response.content.decode()
    assert _files_under(site) == before
    assert list(Submission.objects.values_list("pk", flat=True)) == [other.pk]
    assert refused_uploads(users["submitter"]) == 0


def test_upload_over_the_size_limit_is_refused_before_saving(site: Path, clients, settings) -> None:
    limit = settings.TRUSTTRACE["MAX_UPLOAD_BYTES"]
    big = SimpleUploadedFile("big.mp4", b"\x00" * (limit + 1))
    response = clients["submitter"].post(reverse("analyses:submit"), {"file": big})
    # Stopped while reading (analyses.limits.LimitedUploadHandler), not after.
    assert response.status_code == 413
    assert "larger than the 2 MiB upload limit" in response.content.decode()
    assert not _files_under(site)


def test_huge_request_is_refused_from_its_declared_length(site: Path, clients) -> None:
    response = clients["submitter"].generic(
        "POST",
        reverse("analyses:submit"),
        data=b"x" * 16,
        content_type="multipart/form-data; boundary=zz",
        CONTENT_LENGTH=str(50 * 2**20),
    )
    assert response.status_code == 413
    assert "larger than the 2 MiB upload limit" in response.content.decode()
    assert not _files_under(site)


def test_path_traversal_name_is_display_text_only(
    site: Path, clients, media_dir: Path, monkeypatch
) -> None:
    from analyses import services

    monkeypatch.setattr(services.queue, "enqueue", lambda sub: None)
    fake = SimpleUploadedFile("../../../../etc/passwd.png", (media_dir / "face.png").read_bytes())
    fake.name = "../../../../etc/passwd.png"  # as a hostile client would send it
    sub = services.create_submission(_user(), fake)
    assert sub.original_name == "passwd.png"
    assert Path(sub.file.path).parent == site / "uploads"
    assert Path(sub.file.path).name.endswith(".png") and "passwd" not in sub.file.name


def _user():
    from django.contrib.auth.models import User

    return User.objects.get(username="alice")


def test_path_traversal_name_through_the_form_never_escapes(
    site: Path, clients, media_dir: Path, monkeypatch
) -> None:
    from analyses import services

    monkeypatch.setattr(services.queue, "enqueue", lambda sub: None)
    body = _multipart("..%2F..%2F/x/../../evil.png", (media_dir / "face.png").read_bytes())
    response = clients["submitter"].generic(
        "POST",
        reverse("analyses:submit"),
        data=body,
        content_type="multipart/form-data; boundary=BOUNDARY",
    )
    assert response.status_code == 302
    sub = Submission.objects.get()
    assert "/" not in sub.original_name and ".." not in Path(sub.file.name).name
    assert _files_under(site) == {Path(sub.file.path)}


def _multipart(filename: str | bytes, payload: bytes) -> bytes:
    name = filename if isinstance(filename, bytes) else filename.encode()
    return (
        b'--BOUNDARY\r\nContent-Disposition: form-data; name="file"; filename="'
        + name
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + payload
        + b"\r\n--BOUNDARY--\r\n"
    )


def test_non_utf8_file_name_is_refused_with_reason(site: Path, clients, media_dir: Path) -> None:
    body = _multipart(b"caf\xe9\xff.png", (media_dir / "face.png").read_bytes())
    response = clients["submitter"].generic(
        "POST",
        reverse("analyses:submit"),
        data=body,
        content_type="multipart/form-data; boundary=BOUNDARY",
    )
    assert response.status_code == 400
    assert "file name may not be valid UTF-8" in response.content.decode()
    assert not _files_under(site) and not Submission.objects.exists()


def test_type_comes_from_content_not_extension(
    site: Path, clients, media_dir: Path, monkeypatch
) -> None:
    from analyses import services

    monkeypatch.setattr(services.queue, "enqueue", lambda sub: None)
    with (media_dir / "face.png").open("rb") as fh:
        upload = SimpleUploadedFile("holiday.mp4", fh.read())
    response = clients["submitter"].post(reverse("analyses:submit"), {"file": upload})
    assert response.status_code == 302
    sub = Submission.objects.get()
    assert sub.kind == "image" and sub.media_format == "png" and sub.file.name.endswith(".png")


@pytest.mark.parametrize(
    ("fmt", "suffix", "stored"),
    [("GIF", "gif", ".gif"), ("PNG", "apng", ".png"), ("WEBP", "webp", ".webp")],
)
def test_an_animated_gif_or_png_is_kept_as_an_animation_and_shown_as_a_picture(
    site: Path, clients, tmp_path: Path, monkeypatch, fmt: str, suffix: str, stored: str
) -> None:
    """Read as a video (its frames over time), kept under the suffix a
    browser animates it by, and shown in <img>: a <video> element plays
    neither."""
    from PIL import Image

    from analyses import services

    monkeypatch.setattr(services.queue, "enqueue", lambda sub: None)
    face = mf.face_image(96)
    pictures = [Image.fromarray(np.roll(face, 4 * i, axis=1)) for i in range(4)]
    path = tmp_path / f"moving.{fmt.lower()}"
    pictures[0].save(path, fmt, save_all=True, append_images=pictures[1:], duration=100, loop=0)
    response = clients["submitter"].post(reverse("analyses:submit"), {"file": upload(path)})
    assert response.status_code == 302
    sub = Submission.objects.get()
    assert (sub.kind, sub.media_format) == ("video", suffix) and sub.file.name.endswith(stored)
    assert not sub.plays_in_video_player
    served = clients["submitter"].get(reverse("analyses:file", args=[sub.pk]))
    assert served["Content-Type"] == f"image/{fmt.lower()}"


def test_a_finished_animation_is_shown_in_img_and_a_video_in_video(
    site: Path, clients, users, finished
) -> None:
    sub = finished(users["submitter"])
    for media_format, shown in (("gif", "img"), ("apng", "img"), ("webp", "img"), ("mp4", "video")):
        Submission.objects.filter(pk=sub.pk).update(kind="video", media_format=media_format)
        page = clients["submitter"].get(reverse("analyses:detail", args=[sub.pk]))
        html = page.content.decode()
        if shown == "img":
            assert 'alt="the submitted animation"' in html and "<video" not in html
        else:
            assert "<video" in html and "the submitted animation" not in html


def test_upload_page_refuses_when_no_weights_are_installed(
    no_weights_site: Path, clients, media_dir: Path
) -> None:
    page = clients["submitter"].get(reverse("analyses:submit")).content.decode()
    assert "Uploads are refused" in page and "No weights are installed" in page
    with (media_dir / "face.png").open("rb") as fh:
        response = clients["submitter"].post(reverse("analyses:submit"), {"file": fh})
    assert response.status_code == 503 and not Submission.objects.exists()
    assert str(no_weights_site) not in response.content.decode()


def test_bad_reference_refuses_the_whole_upload_and_keeps_neither_file(
    site: Path, clients, media_dir: Path, tmp_path: Path
) -> None:
    bad = mf.text_as_mp4(tmp_path / "reference.mp4")
    with (media_dir / "face.png").open("rb") as good, bad.open("rb") as ref:
        response = clients["submitter"].post(
            reverse("analyses:submit"), {"file": good, "reference": ref}
        )
    assert response.status_code == 400 and "text file" in response.content.decode()
    assert not _files_under(site) and not Submission.objects.exists()
