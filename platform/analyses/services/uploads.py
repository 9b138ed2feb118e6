"""Uploads: checked at the edge (name, size, type by content, a decode probe),
stored under a random name, then queued."""

from __future__ import annotations

import errno
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import F

from analyses.config import trusttrace_settings
from analyses.models import Submission
from analyses.services import queue
from analyses.services.errors import QuotaExceeded, StorageUnavailable, UploadRejected
from analyses.services.members import record_weights_versions, require_models
from analyses.services.probing import probe_upload
from analyses.services.quotas import check_quotas, note_unsaved_upload, previous_result
from analyses.services.storage import STAGING_DIR, UPLOAD_DIR, media_root

logger = logging.getLogger(__name__)

# Frames decoded by the upload probe: enough to prove the file decodes.
PROBE_FRAMES = 1
_COPY_CHUNK = 1 << 20
_SUFFIX = {
    "jpeg": ".jpg",
    "png": ".png",
    "webp": ".webp",
    "bmp": ".bmp",
    "gif": ".gif",
    # An animated PNG is a PNG to browsers (they animate it in <img>).
    "apng": ".png",
    "mp4": ".mp4",
    "mov": ".mov",
    "webm": ".webm",
    "mkv": ".mkv",
    "avi": ".avi",
}


@dataclass(frozen=True)
class Probed:
    """What the edge check learnt about an upload."""

    kind: str
    format: str
    sha256: str
    size_bytes: int
    provenance: dict[str, Any] = field(default_factory=dict)  # C2PA summary


def display_name(name: str | None) -> str:
    """The client's file name as harmless display text (never a path)."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    clean = "".join(c for c in base if c.isprintable()).strip()
    return clean[:255] or "upload"


def check_name(name: str | None) -> None:
    """Refuse file names that did not survive decoding (non-UTF-8 bytes)."""
    if name and "\ufffd" in name:
        raise UploadRejected(
            "The file name is not valid UTF-8 text; please rename the file and try again.",
            "bad_name",
        )


def _limits_text(limit: int) -> str:
    return f"{limit / 2**20:.0f} MiB" if limit >= 2**20 else f"{limit} bytes"


def check_size(size: int | None) -> None:
    """Refuse anything over ``MAX_UPLOAD_BYTES`` (checked before saving)."""
    limit = trusttrace_settings().max_upload_bytes
    if size is not None and size > limit:
        raise UploadRejected(
            f"The upload is {_limits_text(size)}; the limit is {_limits_text(limit)}.",
            "too_large",
        )


def probe(path: Path) -> Probed:
    """Type by content, a decode probe and the pixel, duration and frame-rate
    limits, in a child process with a time and a memory cap (:mod:`.probing`);
    then the file's C2PA Content Credentials, which never refuse it."""
    outcome = probe_upload(path, PROBE_FRAMES)
    info = outcome.info
    return Probed(info.kind, info.format, info.sha256, info.size_bytes, outcome.provenance)


STORAGE_FULL_REASON = (
    "The site has no room left to store this file. This is the site's fault, not your "
    "file's; it was logged. Please try again later."
)
STORAGE_FAULT_REASON = (
    "The site could not store this file (a fault of its storage, not of your file); it was "
    "logged. Please try again later."
)


def _stage(upload: UploadedFile) -> Path:
    """A copy of ``upload`` under ``staging/``, or :class:`StorageUnavailable`
    (with nothing left behind) when the site's disk cannot take it."""
    folder = media_root() / STAGING_DIR
    path = folder / uuid.uuid4().hex
    # Created with the configured mode (0640): open() would give 0644 under
    # the usual umask, and the file keeps its mode when moved into uploads/.
    mode = int(settings.FILE_UPLOAD_PERMISSIONS or 0o640)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            for chunk in upload.chunks(_COPY_CHUNK):
                fh.write(chunk)
    except BaseException as e:
        path.unlink(missing_ok=True)  # no partial copy stays behind
        if not isinstance(e, OSError):
            raise
        logger.error("could not stage an upload in %s", folder, exc_info=True)
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        raise StorageUnavailable(STORAGE_FULL_REASON if full else STORAGE_FAULT_REASON) from e
    return path


def _accept(upload: UploadedFile) -> tuple[Path, Probed]:
    """Stage, check and move one upload under a random name; nothing is left
    behind when it is refused."""
    check_name(upload.name)
    check_size(upload.size)
    staged = _stage(upload)
    try:
        check_size(staged.stat().st_size)
        probed = probe(staged)
        final = media_root() / UPLOAD_DIR / f"{uuid.uuid4().hex}{_SUFFIX[probed.format]}"
        final.parent.mkdir(parents=True, exist_ok=True)
        staged.replace(final)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return final, probed


def create_submission(
    owner: User,
    upload: UploadedFile,
    *,
    title: str = "",
    reference: UploadedFile | None = None,
) -> Submission:
    """Check an upload at the edge, save it, then queue its analysis (see
    :func:`submit`, which can reuse an earlier result instead)."""
    sub, _ = submit(owner, upload, title=title, reference=reference)
    return sub


def submit(
    owner: User,
    upload: UploadedFile,
    *,
    title: str = "",
    reference: UploadedFile | None = None,
    reuse: bool = False,
) -> tuple[Submission, bool]:
    """Check an upload at the edge, save it, then queue its analysis; returns
    the submission and whether it is an earlier one reused.

    With ``reuse``, the owner's latest finished analysis of the same file (and
    reference) is returned instead and nothing is stored
    (:func:`.quotas.previous_result`).

    Raises :class:`UploadRejected` (nothing saved) when the models are missing,
    a per-user limit is reached (:class:`QuotaExceeded`) or the file is
    refused, and :class:`QueueUnavailable` (saved, pending, its file kept; the
    reaper queues it later) when the broker refuses the message.
    """
    record_weights_versions(require_models())
    incoming = int(upload.size or 0) + int(reference.size or 0 if reference else 0)
    check_quotas(owner, incoming, hourly_only=reuse)
    try:
        path, probed = _accept(upload)
    except UploadRejected as e:
        note_unsaved_upload(owner, e.code)
        raise
    ref_path: Path | None = None
    try:
        ref_probed: Probed | None = None
        if reference is not None:
            try:
                ref_path, ref_probed = _accept(reference)
            except UploadRejected as e:
                note_unsaved_upload(owner, e.code)
                raise
        previous = (
            previous_result(owner, probed.sha256, ref_probed.sha256 if ref_probed else "")
            if reuse
            else None
        )
        if previous is not None:
            path.unlink(missing_ok=True)
            if ref_path is not None:
                ref_path.unlink(missing_ok=True)
            note_unsaved_upload(owner, "reused")
            logger.info("upload of %s reuses submission %s", probed.sha256[:12], previous.pk)
            return previous, True
        with transaction.atomic():
            # Checked again now that the file is staged, under a write lock
            # taken first (a no-op UPDATE of the owner's row: a row lock on
            # Postgres; on SQLite the write lock, taken before any read so
            # that it is waited for, never refused as a read-then-write
            # upgrade would be): uploads sent at once all passed the first
            # check, made before their probes.
            User.objects.filter(pk=owner.pk).update(last_login=F("last_login"))
            try:
                check_quotas(owner, incoming)
            except QuotaExceeded as e:
                note_unsaved_upload(owner, e.code)  # it cost a probe
                raise
            sub = Submission(
                owner=owner,
                title=title.strip()[:200],
                original_name=display_name(upload.name),
                sha256=probed.sha256,
                size_bytes=probed.size_bytes,
                kind=probed.kind,
                media_format=probed.format,
                provenance=probed.provenance,
            )
            sub.file.name = path.relative_to(media_root()).as_posix()
            if ref_path is not None and ref_probed is not None and reference is not None:
                sub.reference_file.name = ref_path.relative_to(media_root()).as_posix()
                sub.reference_name = display_name(reference.name)
                sub.reference_sha256 = ref_probed.sha256
                sub.reference_size_bytes = ref_probed.size_bytes
            sub.save()
    except BaseException:
        path.unlink(missing_ok=True)
        if ref_path is not None:
            ref_path.unlink(missing_ok=True)
        raise
    logger.info("submission %s saved (%s, %s)", sub.pk, sub.kind, sub.sha256[:12])
    # Outside the try: the row and its files are kept whatever the broker says.
    queue.enqueue(sub)
    return sub, False
