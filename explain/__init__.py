"""Explanations of an analysis: Grad-CAM overlays, attention maps, SSIM masks
and per-frame charts, written as files with an index (``index.json``).

Pure: may import :mod:`ensemble`, never Django, Celery or the platform.
"""

from __future__ import annotations

from explain.config import ALL_KINDS, ArtifactKind, ExplainConfig
from explain.errors import ExplainError, InvalidReferenceError
from explain.explainer import Explainer
from explain.index import Artifact, ExplanationIndex

__all__ = [
    "ALL_KINDS",
    "Artifact",
    "ArtifactKind",
    "ExplainConfig",
    "ExplainError",
    "Explainer",
    "ExplanationIndex",
    "InvalidReferenceError",
]
