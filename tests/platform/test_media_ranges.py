"""The media endpoint answers HTTP byte ranges (issue 17: Safari could not
play the video; a seek downloaded the whole file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from analyses.ranges import RangeNotSatisfiable, parse_range

pytestmark = pytest.mark.django_db


def _get(c: Client, url: str, **headers: str) -> Any:
    response = c.get(url, headers=headers)
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return response, body


def test_a_range_of_the_upload_is_206_with_those_bytes(
    site: Path, users, clients: dict[str, Client], finished: Any
) -> None:
    sub = finished(users["submitter"])
    data = Path(sub.file.path).read_bytes()
    url = reverse("analyses:file", args=[sub.pk])
    response, body = _get(clients["submitter"], url, Range="bytes=10-19")
    # Before: 200 and the whole file, whatever the Range header said.
    assert response.status_code == 206 and body == data[10:20]
    assert response["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert response["Content-Length"] == "10"
    assert response["Cache-Control"] == "private, no-store"

    response, body = _get(clients["submitter"], url, Range="bytes=-7")
    assert response.status_code == 206 and body == data[-7:]
    response, body = _get(clients["submitter"], url, Range=f"bytes={len(data) - 3}-")
    assert response.status_code == 206 and body == data[-3:]

    response, body = _get(clients["submitter"], url)
    assert response.status_code == 200 and body == data
    assert response["Accept-Ranges"] == "bytes"


def test_a_range_beyond_the_end_is_416_and_others_still_get_404(
    site: Path, users, clients: dict[str, Client], finished: Any
) -> None:
    sub = finished(users["submitter"])
    size = Path(sub.file.path).stat().st_size
    url = reverse("analyses:file", args=[sub.pk])
    response, body = _get(clients["submitter"], url, Range=f"bytes={size}-")
    assert response.status_code == 416 and response["Content-Range"] == f"bytes */{size}"
    assert body == b""
    assert clients["other"].get(url, headers={"Range": "bytes=0-1"}).status_code == 404


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", None),
        ("bytes=0-0", (0, 0)),
        ("bytes=5-1000", (5, 99)),
        ("bytes=-200", (0, 99)),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("bytes=9-3", None),
        # Numbers too long for int() (over 4,300 digits) were a 500.
        ("bytes=5-" + "9" * 5000, (5, 99)),
        ("bytes=-" + "9" * 5000, (0, 99)),
        ("bytes=" + "0" * 4999 + "7-8", (7, 8)),
    ],
)
def test_range_header_parsing(header: str, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


def test_unsatisfiable_ranges_raise() -> None:
    for header in ("bytes=100-", "bytes=-0", "bytes=" + "9" * 5000 + "-"):
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, 100)
