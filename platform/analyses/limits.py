"""The request size limits, enforced before anything reads the body.

:class:`UploadLimitMiddleware` sits before ``CsrfViewMiddleware`` (which
reads ``request.POST``, and so the whole multipart body, on every POST): a
request declaring more than its path allows is a 413 before a byte is read.
:class:`LimitedUploadHandler` runs first among the upload handlers and stops
reading a file part at ``MAX_UPLOAD_BYTES`` whatever the declared length
allowed (one 2 GiB file fits the room left for a reference beside it).
Only the upload endpoints take large bodies; every other path gets
``DATA_UPLOAD_MAX_MEMORY_SIZE``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.utils.html import escape

from analyses.config import trusttrace_settings

logger = logging.getLogger(__name__)

# Room for the form fields and multipart framing beside the files themselves.
MULTIPART_SLACK_BYTES = 2**20
# A reference may accompany the file: two files at most.
FILES_PER_UPLOAD = 2
_OVER_LIMIT = "trusttrace.upload_over_limit"


def upload_paths() -> frozenset[str]:
    """The paths that accept media uploads."""
    return frozenset({reverse("analyses:submit"), reverse("api:submission-list")})


def max_upload_bytes() -> int:
    return trusttrace_settings().max_upload_bytes


def limit_text(limit: int) -> str:
    return f"{limit / 2**20:.0f} MiB" if limit >= 2**20 else f"{limit} bytes"


def body_limit(request: HttpRequest) -> int:
    """The largest body ``request``'s path accepts, in bytes."""
    if request.path in upload_paths():
        return FILES_PER_UPLOAD * max_upload_bytes() + MULTIPART_SLACK_BYTES
    return int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0) + MULTIPART_SLACK_BYTES


def declared_length(request: HttpRequest) -> int | None:
    try:
        return int(str(request.META.get("CONTENT_LENGTH") or 0))
    except ValueError:
        return None


def declared_too_large(request: HttpRequest) -> bool:
    """Whether the request declares a body larger than its path accepts."""
    declared = declared_length(request)
    return declared is not None and declared > body_limit(request)


def upload_over_limit(request: HttpRequest) -> bool:
    """Whether :class:`LimitedUploadHandler` stopped reading this request."""
    return bool(request.META.get(_OVER_LIMIT))


def too_large_message(request: HttpRequest) -> str:
    if request.path in upload_paths():
        limit = limit_text(max_upload_bytes())
        return f"Upload refused: the request is larger than the {limit} upload limit."
    return "The request is larger than this page accepts."


def too_large_response(request: HttpRequest) -> HttpResponse:
    """413, as JSON ``{detail, code}`` on the API, as a short page elsewhere."""
    message = too_large_message(request)
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": message, "code": "too_large"}, status=413)
    return HttpResponse(
        f"<!doctype html><title>Too large</title><p>{escape(message)}</p>",
        status=413,
        content_type="text/html; charset=utf-8",
    )


class UploadLimitMiddleware:
    """Refuse a request from its declared length before anything reads it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method in ("POST", "PUT", "PATCH") and declared_too_large(request):
            logger.warning(
                "refused %s %s: declared %s bytes",
                request.method,
                request.path,
                request.META.get("CONTENT_LENGTH"),
            )
            return too_large_response(request)
        return self.get_response(request)


class LimitedUploadHandler(FileUploadHandler):
    """Stop reading a file part past ``MAX_UPLOAD_BYTES`` (the upload paths)
    or past ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (anywhere else); the partial file
    is discarded and the view answers 413 (:func:`upload_over_limit`)."""

    def __init__(self, request: HttpRequest | None = None) -> None:
        super().__init__(request)
        self.limit = max_upload_bytes()
        if request is not None and request.path not in upload_paths():
            self.limit = int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0)
        self.received = 0

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        self.received = 0
        super().new_file(*args, **kwargs)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > self.limit:
            if self.request is not None:
                self.request.META[_OVER_LIMIT] = True
            logger.warning("upload stopped at %d bytes (limit %d)", self.received, self.limit)
            raise StopUpload(connection_reset=True)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None
