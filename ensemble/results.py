"""The result of an analysis: frozen dataclasses, and their JSON form."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ensemble.media import MediaInfo
from ensemble.scoring import Verdict

Status = Literal["done", "rejected", "failed"]


@dataclass(frozen=True)
class FrameInfo:
    """A sampled frame: its position among the samples, its index in the
    video, its time, and how many faces were found in it."""

    position: int
    index: int
    time_s: float
    faces: int


@dataclass(frozen=True)
class FaceResult:
    """One face in one sampled frame, with every member's calibrated probability."""

    position: int  # sampled frame position
    person: int
    box: tuple[float, float, float, float]
    detection_score: float
    keypoints: tuple[tuple[float, float], ...]
    members: Mapping[str, float]
    score: float  # the ensemble's probability (ensemble.calibration.Combiner)


@dataclass(frozen=True)
class PersonResult:
    """A face track: one person across the sampled frames."""

    id: int
    positions: tuple[int, ...]
    members: Mapping[str, float]
    score: float
    verdict: Verdict


@dataclass(frozen=True)
class ModelInfo:
    name: str
    weights_sha256: str | None
    input_size: int
    temperature: float
    # What computed the logits ("torch", "onnxruntime", "openvino") and in
    # which precision ("fp32", "bf16").
    backend: str = "torch"
    precision: str = "fp32"
    # Whether each face's logit is the mean of the face as is and mirrored.
    mirrored: bool = False
    # Added to the logit after the temperature (``ensemble.scoring.calibrate``).
    bias: float = 0.0


@dataclass(frozen=True)
class AnalysisResult:
    file: str
    status: Status
    reason: str | None = None
    reason_code: str | None = None
    media: MediaInfo | None = None
    frames: tuple[FrameInfo, ...] = ()
    faces: tuple[FaceResult, ...] = ()
    persons: tuple[PersonResult, ...] = ()
    members: Mapping[str, float] = field(default_factory=dict)
    score: float | None = None
    verdict: Verdict | None = None
    threshold: float | None = None
    uncertain_band: float | None = None
    models: tuple[ModelInfo, ...] = ()
    # How the members' probabilities were combined (ensemble.calibration.Combiner.describe).
    combination: Mapping[str, Any] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)

    def frame_rows(self) -> list[dict[str, Any]]:
        """One row per (sampled frame, person): the per-frame score series."""
        frames = {f.position: f for f in self.frames}
        rows = []
        for face in sorted(self.faces, key=lambda f: (f.position, f.person)):
            frame = frames[face.position]
            rows.append(
                {
                    "frame": frame.index,
                    "time": round(frame.time_s, 4),
                    "person": face.person,
                    "score": face.score,
                    "members": dict(face.members),
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        """The CLI's JSON form (``file, status, reason, score, verdict,
        members, frames, timings`` and details)."""
        return {
            "file": self.file,
            "status": self.status,
            "reason": self.reason,
            "reason_code": self.reason_code,
            "score": self.score,
            "verdict": self.verdict,
            "threshold": self.threshold,
            "uncertain_band": self.uncertain_band,
            "members": dict(self.members),
            "frames": self.frame_rows(),
            "persons": [
                {
                    "id": p.id,
                    "frames": [self.frames[i].index for i in p.positions],
                    "score": p.score,
                    "verdict": p.verdict,
                    "members": dict(p.members),
                }
                for p in self.persons
            ],
            "media": asdict(self.media) if self.media else None,
            "models": [asdict(m) for m in self.models],
            "combination": dict(self.combination),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }
