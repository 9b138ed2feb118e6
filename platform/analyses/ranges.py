"""Byte ranges (RFC 9110 section 14) for the permission-checked media views:
Safari will not play a video without them, and a player seeking in a large
file should not download it whole. One range per request; a request for
several, or a malformed header, gets the whole file (the RFC allows it)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import BinaryIO

from django.http import HttpRequest

from ensemble.errors import TrusttraceError

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# Positions of more digits than this lie beyond any file, and are read as
# this: Python refuses int() of a string of over 4,300 digits (a 500 before).
_DIGITS = 18
_BEYOND = 10**_DIGITS


def _position(text: str) -> int:
    digits = text.lstrip("0") or "0"
    return int(digits) if len(digits) <= _DIGITS else _BEYOND


class _Slice(io.RawIOBase):
    """``length`` bytes of ``path`` from ``start``, read in the caller's chunks."""

    def __init__(self, path: Path, start: int, length: int) -> None:
        self._fh = path.open("rb")
        self._fh.seek(start)
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        view = memoryview(buffer)[: self._left]
        n = self._fh.readinto(view)
        self._left -= n
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


class RangeNotSatisfiable(TrusttraceError):  # noqa: N818 (an answer, 416)
    """The range lies outside the file."""

    code = "range_not_satisfiable"


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(first, last)`` inclusive for a satisfiable single range; ``None``
    when the header is absent, malformed or asks for several ranges (serve
    it all). Raises :class:`RangeNotSatisfiable` (416)."""
    match = _RANGE.match(header.strip().replace(" ", ""))
    if not match:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:  # the last N bytes
        suffix = _position(last_text)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - suffix), size - 1
    first = _position(first_text)
    last = _position(last_text) if last_text else size - 1
    if first >= size:
        raise RangeNotSatisfiable
    if last < first:
        return None
    return first, min(last, size - 1)


def open_range(request: HttpRequest | None, path: Path) -> tuple[BinaryIO, int, dict[str, str]]:
    """The file object to stream, the status (200, 206 or 416) and the
    headers to add for ``request``'s ``Range`` header."""
    size = path.stat().st_size
    headers = {"Accept-Ranges": "bytes"}
    try:
        wanted = parse_range(str(request.headers.get("Range", "")), size) if request else None
    except RangeNotSatisfiable:
        headers["Content-Range"] = f"bytes */{size}"
        return io.BytesIO(b""), 416, headers
    if wanted is None:
        return path.open("rb"), 200, headers
    first, last = wanted
    length = last - first + 1
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    headers["Content-Length"] = str(length)
    return io.BufferedReader(_Slice(path, first, length)), 206, headers
