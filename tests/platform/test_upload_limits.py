"""Uploads that cost more than their size (issue 17): a request is refused
from its declared length before CsrfViewMiddleware reads the body, and a file
part is not read past the upload limit whatever the declared length allowed."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client
from django.urls import reverse

from analyses.models import Submission

pytestmark = pytest.mark.django_db

BOUNDARY = "zz"
PART_HEAD = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n'
    "Content-Type: video/mp4\r\n\r\n"
).encode()


class CountingInput(io.RawIOBase):
    """A client's body: a multipart file part of ``size`` zero bytes (then the
    stream ends), counting what the server read."""

    def __init__(self, size: int) -> None:
        self.data = io.BytesIO(PART_HEAD + b"\0" * size)
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.data.readinto(buffer)
        self.read_bytes += n
        return n


def _wsgi_post(path: str, body: CountingInput, declared: int) -> tuple[int, bytes]:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "HTTP_HOST": "testserver",
        "wsgi.url_scheme": "http",
        "CONTENT_TYPE": f"multipart/form-data; boundary={BOUNDARY}",
        "CONTENT_LENGTH": str(declared),
        "wsgi.input": io.BufferedReader(body),
        "wsgi.errors": io.StringIO(),
        # With a CSRF cookie (any visitor gets one) CsrfViewMiddleware reads
        # the body to find the form's token.
        "HTTP_COOKIE": "csrftoken=" + "a" * 32,
    }
    status: list[str] = []
    chunks = WSGIHandler()(environ, lambda s, h, *a: status.append(s))
    return int(status[0].split()[0]), b"".join(chunks)


@pytest.mark.parametrize("path", ["/submit/", "/api/submissions/", "/accounts/login/"])
def test_request_declaring_3_gib_is_413_before_any_byte_is_read(site: Path, path: str) -> None:
    body = CountingInput(8 * 2**20)
    code, content = _wsgi_post(path, body, 3 * 2**30)
    # Before: CsrfViewMiddleware parsed the multipart body (here all 8 MiB of
    # it, streamed to a temporary file) before any view could refuse it: 403.
    assert code == 413, content[:300]
    assert body.read_bytes == 0
    assert not any(p.is_file() for p in site.rglob("*"))


def test_login_page_refuses_a_body_far_larger_than_a_form(site: Path, settings: Any) -> None:
    body = CountingInput(16)
    declared = settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 2 * 2**20
    code, _ = _wsgi_post("/accounts/login/", body, declared)
    assert code == 413 and body.read_bytes == 0


@pytest.fixture
def streamed_to_disk(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes of file parts that reached the temporary-file handler."""
    seen: list[int] = []
    real = TemporaryFileUploadHandler.receive_data_chunk

    def spy(self: TemporaryFileUploadHandler, raw_data: bytes, start: int) -> Any:
        seen.append(len(raw_data))
        return real(self, raw_data, start)

    monkeypatch.setattr(TemporaryFileUploadHandler, "receive_data_chunk", spy)
    return seen


def test_file_over_the_limit_is_not_read_past_it_on_the_site(
    site: Path, clients: dict[str, Client], streamed_to_disk: list[int]
) -> None:
    limit = 2 * 2**20  # the site fixture's MAX_UPLOAD_BYTES
    big = io.BytesIO(b"\0" * (limit + 3 * 2**19))  # fits the declared room for two files
    big.name = "big.mp4"
    response = clients["submitter"].post(reverse("analyses:submit"), {"file": big})
    # Before: all of it went to a temporary file, then a 400 after the copy.
    assert response.status_code == 413
    assert "larger than the 2 MiB upload limit" in response.content.decode()
    assert sum(streamed_to_disk) <= limit
    assert not Submission.objects.exists()
    assert not any(p.is_file() for p in site.rglob("*"))


def test_file_over_the_limit_is_not_read_past_it_on_the_api(
    site: Path, users: dict[str, Any], streamed_to_disk: list[int]
) -> None:
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(users["submitter"])
    limit = 2 * 2**20
    big = io.BytesIO(b"\0" * (limit + 3 * 2**19))
    big.name = "big.mp4"
    response = api.post("/api/submissions/", {"file": big}, format="multipart")
    assert response.status_code == 413 and response.json()["code"] == "too_large"
    assert sum(streamed_to_disk) <= limit
    assert not Submission.objects.exists()


def test_oversized_reference_beside_a_good_file_refuses_the_upload(
    site: Path, clients: dict[str, Client], media_dir: Path
) -> None:
    big = io.BytesIO(b"\0" * (2 * 2**20 + 1))
    big.name = "ref.mp4"
    with (media_dir / "face.png").open("rb") as fh:
        response = clients["submitter"].post(
            reverse("analyses:submit"), {"file": fh, "reference": big}
        )
    assert response.status_code == 413 and not Submission.objects.exists()
