"""Where a submission's files live under MEDIA_ROOT."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from analyses.models import Submission

UPLOAD_DIR = "uploads"
ARTIFACT_DIR = "artifacts"
STAGING_DIR = "staging"


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
    import shutil

    shutil.rmtree(media_root() / ARTIFACT_DIR / str(sub_id), ignore_errors=True)


def attempt_dir(sub: Submission) -> Path:
    """The folder of one run of ``sub``'s analysis (its ``attempts`` count
    when it claimed the job): a run that loses the job to another (a reaper,
    a moderator's re-run) writes nowhere near the files the other run keeps."""
    return artifact_dir(sub) / f"run-{sub.attempts}"
