"""The index of an explanation: every artifact file and the chart series.

``index.json`` (version 2)::

    {"version": 2,
     "artifacts": [{"kind", "path", "frame", "time", "person", "member",
                    "caption", "width", "height", "media_type"}],
     "series": {"threshold", "uncertain_band",
                "persons": [{"id", "points": [{"frame", "time", "score",
                                               "members": {name: score},
                                               "box": [x0, y0, x1, y1]}]}]}}

``path`` is relative to the folder holding ``index.json``. ``frame``,
``time`` and ``person`` are ``null`` for the chart, which covers them all;
``person`` is ``null`` for ``frame`` (a whole sampled frame, the context);
``member`` is ``null`` for artifacts not made by one member. ``box`` is the
face box as fractions of the frame's width and height.

Kinds: ``face`` is a person's face crop in a frame; ``gradcam`` and
``attention`` are that same crop (same framing and size) with a member's map
drawn at full strength over the region the member saw, so a viewer lays
them over the ``face`` of the same person and frame at any opacity;
``ssim_temporal`` and ``ssim_reference`` are three aligned faces side by
side (first, second, their difference); ``chart`` covers the whole analysis.
Version 1 had no ``face``, ``frame`` or ``box``, and its ``gradcam`` and
``attention`` images were whole frames.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from explain.config import ALL_KINDS, ArtifactKind

# Why an explanation is missing when the job's time ran out before it was
# made (as the other reasons: "Class: message"; programs see the class).
OUT_OF_TIME = "TimedOut: the analysis reached its time limit before this was made"

INDEX_VERSION = 2
INDEX_NAME = "index.json"


@dataclass(frozen=True)
class Artifact:
    """One file of the explanation."""

    kind: ArtifactKind
    path: str
    frame: int | None
    time: float | None
    person: int | None
    member: str | None
    caption: str
    width: int
    height: int
    media_type: str

    def __post_init__(self) -> None:
        if self.kind not in ALL_KINDS:
            raise ValueError(f"unknown artifact kind {self.kind!r}")
        if Path(self.path).is_absolute() or ".." in Path(self.path).parts:
            raise ValueError(f"artifact paths are relative and stay inside: {self.path!r}")


@dataclass(frozen=True)
class ExplanationIndex:
    artifacts: tuple[Artifact, ...]
    series: dict[str, Any] = field(default_factory=dict)
    version: int = INDEX_VERSION
    # Seconds each kind took to make; reported to logs and benchmarks, not written.
    timings: dict[str, float] = field(default_factory=dict, compare=False)
    # Kinds that failed, and why (their files are removed; the result stands).
    missing: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "version": self.version,
            "artifacts": [asdict(a) for a in self.artifacts],
            "series": self.series,
        }
        if self.missing:
            data["missing"] = dict(self.missing)
        return data

    def write(self, out_dir: Path) -> Path:
        """Write ``index.json`` into ``out_dir``; its path."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / INDEX_NAME
        path.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExplanationIndex:
        version = data.get("version")
        if version != INDEX_VERSION:
            raise ValueError(f"unsupported explanation index version {version!r}")
        return cls(
            artifacts=tuple(Artifact(**a) for a in data["artifacts"]),
            series=dict(data.get("series") or {}),
            version=version,
            missing={str(k): str(v) for k, v in (data.get("missing") or {}).items()},
        )

    @classmethod
    def read(cls, out_dir: Path) -> ExplanationIndex:
        """The index written by :meth:`write` into ``out_dir``."""
        data = json.loads((out_dir / INDEX_NAME).read_text(encoding="utf-8"))
        return cls.from_dict(data)
