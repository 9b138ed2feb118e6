"""Where a submission's files live under MEDIA_ROOT."""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from django.conf import settings
from django.db.models import Q

from analyses.models import Submission

logger = logging.getLogger(__name__)

UPLOAD_DIR = "uploads"
ARTIFACT_DIR = "artifacts"
STAGING_DIR = "staging"
# An upload is staged only for the seconds its probe takes; older is left over.
STAGED_MAX_AGE_S = 3600.0
# A stored file no row names yet is a moment old (moved into place, then its
# row saved); one a day old belongs to a process killed in between.
ORPHAN_MIN_AGE_S = 86400.0
# Orphans are rare (one per killed upload). A pass that finds more than this
# share of the old files unowned (and more than a few) is looking at the wrong
# or an empty database (a restore in progress, a wrong DATABASE_URL): it
# removes nothing and says so.
ORPHAN_MAX_SHARE = 0.2
ORPHAN_ALWAYS_OK = 5


def media_root() -> Path:
    """``settings.MEDIA_ROOT`` as a path (read at call time: tests override it)."""
    return Path(settings.MEDIA_ROOT)


def artifact_dir(sub: Submission) -> Path:
    """Where a submission's explanation files live (under MEDIA_ROOT): one
    folder per analysis run inside it (:func:`attempt_dir`)."""
    return media_root() / ARTIFACT_DIR / str(sub.pk)


def drop_partial_files(sub_id: object) -> None:
    """Remove the explanation files runs of a job left (a job marked failed
    from outside its run: worker lost twice, hard time limit). A failed job
    has no artifact rows (a re-run removes the earlier result's), so nothing
    the pages show goes."""
    shutil.rmtree(media_root() / ARTIFACT_DIR / str(sub_id), ignore_errors=True)


def attempt_dir(sub: Submission) -> Path:
    """The folder of one run of ``sub``'s analysis (its ``attempts`` count
    when it claimed the job): a run that loses the job to another (a reaper,
    a moderator's re-run) writes nowhere near the files the other run keeps."""
    return artifact_dir(sub) / f"run-{sub.attempts}"


def _older(folder: Path, age_s: float, now: float) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            found = []
            for entry in entries:
                try:
                    if now - entry.stat(follow_symlinks=False).st_mtime > age_s:
                        found.append(entry)
                except FileNotFoundError:
                    continue
            return found
    except FileNotFoundError:
        return []


def _implausible(what: str, unowned: int, old: int) -> bool:
    if unowned <= ORPHAN_ALWAYS_OK or unowned <= old * ORPHAN_MAX_SHARE:
        return False
    logger.error(
        "%d of %d %s older than a day belong to no submission in this database: too many "
        "to be left by killed uploads (is it the right database, or being restored?); "
        "none removed",
        unowned,
        old,
        what,
    )
    return True


def sweep_orphans(now: float | None = None) -> list[str]:
    """Remove files no submission holds, which a process killed mid-upload
    (SIGKILL, out of memory: no clean-up code runs) leaves behind: staged
    copies older than ``STAGED_MAX_AGE_S``, and stored uploads and artifact
    folders older than ``ORPHAN_MIN_AGE_S`` that no row names, unless they
    are too many to be orphans (``ORPHAN_MAX_SHARE``: the database is not the
    one the files belong to). Returns what was removed, relative to
    MEDIA_ROOT (the reaper runs this hourly, first an hour after it starts)."""
    now = time.time() if now is None else now
    root, removed = media_root(), []
    for entry in _older(root / STAGING_DIR, STAGED_MAX_AGE_S, now):
        if entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(f"{STAGING_DIR}/{entry.name}")
    uploads = {
        f"{UPLOAD_DIR}/{e.name}": e
        for e in _older(root / UPLOAD_DIR, ORPHAN_MIN_AGE_S, now)
        if e.is_file(follow_symlinks=False)
    }
    names = list(uploads)
    for start in range(0, len(names), 500):
        chunk = names[start : start + 500]
        held = Submission.objects.filter(Q(file__in=chunk) | Q(reference_file__in=chunk))
        for file, reference in held.values_list("file", "reference_file"):
            uploads.pop(file, None)
            uploads.pop(reference, None)
    if _implausible("uploads", len(uploads), len(names)):
        return removed
    for name, entry in uploads.items():
        Path(entry.path).unlink(missing_ok=True)
        removed.append(name)
    folders: dict[uuid.UUID, os.DirEntry[str]] = {}
    for entry in _older(root / ARTIFACT_DIR, ORPHAN_MIN_AGE_S, now):
        try:
            folders[uuid.UUID(entry.name)] = entry
        except ValueError:
            continue  # not a submission's folder: not ours to judge
    ids = list(folders)
    for start in range(0, len(ids), 500):
        for pk in Submission.objects.filter(pk__in=ids[start : start + 500]).values_list(
            "pk", flat=True
        ):
            folders.pop(pk, None)
    if _implausible("artifact folders", len(folders), len(ids)):
        return removed
    for entry in folders.values():
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(f"{ARTIFACT_DIR}/{entry.name}")
    if removed:
        logger.warning("removed %d files no submission holds: %s", len(removed), removed[:20])
    return removed
