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
    """Where a submission's explanation files live (under MEDIA_ROOT)."""
    return media_root() / ARTIFACT_DIR / str(sub.pk)
