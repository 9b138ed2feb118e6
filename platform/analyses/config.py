"""The one place Django settings become the detection core's configuration,
and the typed view of ``settings.TRUSTTRACE`` the rest of the site reads."""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from ensemble.config import (
    DEFAULT_MIRROR,
    Aggregation,
    AnalysisConfig,
    Backend,
    FaceConfig,
    MediaLimits,
    Precision,
    ScoringConfig,
)
from ensemble.registry import Registry


@dataclass(frozen=True)
class TrusttraceSettings:
    """``settings.TRUSTTRACE`` with a type per key (the field is the key in
    lower case); see settings/base.py for what each means."""

    registry: str
    weights_dir: Path
    cache_dir: Path
    runs_dir: Path
    crops_cache_dir: Path
    members: tuple[str, ...]
    device: str
    threads: int
    frames: int
    batch_size: int
    threshold: float
    uncertain_band: float
    aggregation: Aggregation
    max_upload_bytes: int
    max_pixels: int
    max_duration_s: float
    max_frames: int
    max_video_pixels: int
    max_fps: float
    max_video_frames: int
    probe_timeout_s: float
    probe_max_rss_bytes: int
    progress_interval_s: float
    heartbeat_s: float
    stale_running_s: float
    stale_pending_s: float
    reaper_interval_s: float
    max_pending_per_user: int
    max_uploads_per_hour: int
    max_storage_per_user_bytes: int
    backend: Backend = "auto"
    precision: Precision = "auto"
    c2pa_trust_anchors: Path | None = None
    max_decode_pixels_per_frame: int = MediaLimits.max_decode_pixels_per_frame
    mirror: tuple[str, ...] = DEFAULT_MIRROR

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> TrusttraceSettings:
        """Check and convert each key (a ``str`` or ``Path`` for a path, an
        ``int`` for a ``float``, a list for a tuple); anything else raises
        :class:`ImproperlyConfigured` naming the key. Unknown keys are ignored."""
        hints = typing.get_type_hints(cls)
        given: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.upper()
            if key in values:
                given[f.name] = _typed(key, values[key], hints[f.name])
            elif f.default is MISSING:
                raise ImproperlyConfigured(f"settings.TRUSTTRACE has no {key}")
        return cls(**given)


_WANTED: dict[object, str] = {Path: "a path", int: "a whole number", float: "a number", str: "text"}


def _typed(key: str, value: object, hint: Any) -> object:
    origin = get_origin(hint)
    if origin is types.UnionType and type(None) in get_args(hint):
        # An optional setting: None or empty text is "not set".
        if value is None or value == "":
            return None
        (hint,) = (a for a in get_args(hint) if a is not type(None))
        origin = get_origin(hint)
    if hint is Path and isinstance(value, str | os.PathLike):
        return Path(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    if origin is Literal and value in get_args(hint):
        return value
    if (
        origin is tuple
        and isinstance(value, list | tuple)
        and all(isinstance(v, str) for v in value)
    ):
        return tuple(value)
    if origin is Literal:
        wanted = "one of " + ", ".join(map(repr, get_args(hint)))
    else:
        wanted = _WANTED.get(hint, "a list or tuple of names")
    raise ImproperlyConfigured(f"settings.TRUSTTRACE[{key!r}] must be {wanted}, got {value!r}")


def trusttrace_settings() -> TrusttraceSettings:
    """The current ``settings.TRUSTTRACE``, typed (read on each call, so
    ``override_settings`` in tests applies)."""
    return TrusttraceSettings.from_mapping(settings.TRUSTTRACE)


def analysis_config(
    *, members: Sequence[str] | None = None, frames: int | None = None, **overrides: Any
) -> AnalysisConfig:
    """An :class:`AnalysisConfig` from ``settings.TRUSTTRACE``, with optional
    per-call overrides (the CLI's ``--members``, ``--frames``, ``--precision``)."""
    s = trusttrace_settings()
    fields_: dict[str, Any] = dict(
        weights_dir=s.weights_dir,
        cache_dir=s.cache_dir,
        members=tuple(members) if members else s.members,
        mirror=s.mirror,
        frames=frames or s.frames,
        device=s.device,
        threads=s.threads,
        backend=s.backend,
        precision=s.precision,
        batch_size=s.batch_size,
        limits=MediaLimits(
            max_bytes=s.max_upload_bytes,
            max_pixels=s.max_pixels,
            max_duration_s=s.max_duration_s,
            max_frames=s.max_frames,
            max_video_pixels=s.max_video_pixels,
            max_fps=s.max_fps,
            max_video_frames=s.max_video_frames,
            max_decode_pixels_per_frame=s.max_decode_pixels_per_frame,
        ),
        faces=FaceConfig(),
        scoring=ScoringConfig(
            threshold=s.threshold, uncertain_band=s.uncertain_band, aggregation=s.aggregation
        ),
    )
    return AnalysisConfig(**{**fields_, **overrides})


def analysis_registry() -> Registry:
    """The detector registry named by ``settings.TRUSTTRACE['REGISTRY']``
    (tests point it at a registry of tiny members)."""
    name = trusttrace_settings().registry
    registry = import_string(name)
    if not isinstance(registry, Registry):
        raise TypeError(f"{name} is not an ensemble Registry")
    return registry
