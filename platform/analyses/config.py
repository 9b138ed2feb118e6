"""The one place Django settings become the detection core's configuration."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from ensemble.config import AnalysisConfig, FaceConfig, MediaLimits, ScoringConfig
from ensemble.registry import Registry


def analysis_config(
    *, members: Sequence[str] | None = None, frames: int | None = None, **overrides: Any
) -> AnalysisConfig:
    """An :class:`AnalysisConfig` from ``settings.TRUSTTRACE``, with optional
    per-call overrides (the CLI's ``--members``, ``--frames``, ``--precision``)."""
    s: dict[str, Any] = settings.TRUSTTRACE
    fields: dict[str, Any] = dict(
        weights_dir=Path(s["WEIGHTS_DIR"]),
        cache_dir=Path(s["CACHE_DIR"]),
        members=tuple(members) if members else tuple(s["MEMBERS"]),
        frames=frames or int(s["FRAMES"]),
        device=str(s["DEVICE"]),
        threads=int(s["THREADS"]),
        backend=str(s.get("BACKEND", "auto")),
        precision=str(s.get("PRECISION", "auto")),
        batch_size=int(s["BATCH_SIZE"]),
        limits=MediaLimits(
            max_bytes=int(s["MAX_UPLOAD_BYTES"]),
            max_pixels=int(s["MAX_PIXELS"]),
            max_duration_s=float(s["MAX_DURATION_S"]),
            max_frames=int(s["MAX_FRAMES"]),
            max_video_pixels=int(s["MAX_VIDEO_PIXELS"]),
            max_fps=float(s["MAX_FPS"]),
            max_video_frames=int(s["MAX_VIDEO_FRAMES"]),
        ),
        faces=FaceConfig(),
        scoring=ScoringConfig(
            threshold=float(s["THRESHOLD"]),
            uncertain_band=float(s["UNCERTAIN_BAND"]),
            aggregation=s["AGGREGATION"],
        ),
    )
    return AnalysisConfig(**{**fields, **overrides})


def trusttrace_setting(name: str) -> Any:
    """One value of ``settings.TRUSTTRACE`` (a dict of mixed types)."""
    s: dict[str, Any] = settings.TRUSTTRACE
    return s[name]


def analysis_registry() -> Registry:
    """The detector registry named by ``settings.TRUSTTRACE['REGISTRY']``
    (tests point it at a registry of tiny members)."""
    registry = import_string(str(settings.TRUSTTRACE["REGISTRY"]))
    if not isinstance(registry, Registry):
        raise TypeError(f"{settings.TRUSTTRACE['REGISTRY']} is not an ensemble Registry")
    return registry
