"""Frozen configuration of an analysis.

The Django site builds one :class:`AnalysisConfig` from its settings
(``analyses.config``); the pure packages never read Django settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from ensemble.errors import ConfigError

DEFAULT_MEMBERS: tuple[str, ...] = ("resnet50", "effnet_b7", "effnet_autoatt_b4")
# Members that score each face twice, as is and mirrored left to right, and
# average the two logits (test-time flip). B4 gains most from it for the least
# time (README, "Scoring each face mirrored too"); ``weights/ensemble.json``
# is fitted for one such set and is not applied with another.
DEFAULT_MIRROR: tuple[str, ...] = ("effnet_autoatt_b4",)

Aggregation = Literal["mean", "confident"]
AGGREGATIONS: tuple[Aggregation, ...] = get_args(Aggregation)
# What runs the members and in which precision (ensemble.runtime resolves "auto").
Backend = Literal["auto", "torch", "onnxruntime", "openvino"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)


@dataclass(frozen=True)
class MediaLimits:
    """Limits enforced on every input before any heavy work is done."""

    max_bytes: int = 1024 * 1024 * 1024
    # 8K UHD is 33.2 Mpx; anything larger is refused before decoding.
    max_pixels: int = 40_000_000
    max_duration_s: float = 15 * 60.0
    # Upper bound on the number of frames one analysis may sample.
    max_frames: int = 256
    # Sampled video frames larger than this (pixels) are downscaled while
    # decoding, keeping their aspect ratio, so a huge frame never sits in
    # memory at full size (32 frames of 6400x6000 RGB are 3.7 GB). The
    # default, 3840x2160, leaves every frame up to 4K UHD untouched. 0: never.
    max_video_pixels: int = 3840 * 2160
    # A frame rate no camera makes (frames per second) and more frames than
    # a video of the longest duration at that rate are refused: every frame
    # is a packet the index pass reads. 0 disables either.
    max_fps: float = 240.0
    max_video_frames: int = 900 * 240
    # Decoding work a read of a video may take per sampled frame, on average,
    # in pixels decoded: reaching a sampled frame means decoding from the key
    # frame before it, so a video with few key frames costs far more than its
    # size (one key frame in 216,000 frames: every frame decoded). The
    # default is 2,400 frames of 1920x1080 (80 s at 30 fps between key
    # frames) or 600 of 3840x2160 per sampled frame. 0: no limit.
    max_decode_pixels_per_frame: int = 5_000_000_000
    # A picture must be at least this many pixels on its shorter side (a face
    # narrower than FaceConfig.min_face_px is not judged) and at most this
    # many times longer than it is wide: the face search tiles the picture in
    # squares of its shorter side, so a 65000x1 strip would cost gigabytes.
    # Phone panoramas are up to about 12:1.
    min_side: int = 32
    max_aspect: float = 20.0


@dataclass(frozen=True)
class FaceConfig:
    """Face detection and tracking settings."""

    # BlazeFace front model defaults (MediaPipe's face_detection_front graph).
    min_score: float = 0.75
    nms_iou: float = 0.3
    # Faces narrower than this (pixels, in the full frame) are too small to judge.
    min_face_px: int = 24
    max_faces_per_frame: int = 8
    # Two detections in different frames belong to the same person when their
    # boxes overlap at least this much (IoU) ...
    track_iou: float = 0.25
    # ... and a track must be seen in at least this share of sampled frames
    # (stray false positives are dropped). At least one frame always suffices
    # for a still image.
    min_track_fraction: float = 0.15


@dataclass(frozen=True)
class ScoringConfig:
    """How probabilities become a verdict."""

    threshold: float = 0.5
    # Scores within +/- this of the threshold are reported as "uncertain".
    uncertain_band: float = 0.1
    aggregation: Aggregation = "mean"

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 <= self.uncertain_band < 0.5:
            raise ConfigError(f"uncertain_band must be in [0, 0.5), got {self.uncertain_band}")
        low, high = self.threshold - self.uncertain_band, self.threshold + self.uncertain_band
        if not 0.0 < low <= high < 1.0:
            raise ConfigError(
                f"threshold {self.threshold} +/- uncertain_band {self.uncertain_band} must stay "
                "inside (0, 1), or no score could ever be called fake (or real)"
            )
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(
                f"aggregation must be 'mean' or 'confident', got {self.aggregation!r}"
            )


@dataclass(frozen=True)
class AnalysisConfig:
    """Everything an analysis needs to know, in one immutable object."""

    weights_dir: Path = Path("weights")
    members: tuple[str, ...] = DEFAULT_MEMBERS
    # Of those, the ones that also score each face mirrored (names of members
    # not selected are ignored: ``--members resnet50`` mirrors nothing).
    mirror: tuple[str, ...] = DEFAULT_MIRROR
    frames: int = 32
    device: str = "cpu"
    # Crops per forward pass. 8 runs as fast as 32 on the reference CPU and
    # halves the worker's peak memory (3.3 GB against 6.0 GB for the three
    # members on the 1080p clip; README, "Measured speed").
    batch_size: int = 8
    # Number of intra-op threads for torch on CPU; 0 leaves torch's default.
    threads: int = 0
    # What runs the members: "auto" (on CPU OpenVINO when installed, else ONNX
    # Runtime, else torch), "torch", "onnxruntime" or "openvino"; see
    # ensemble.runtime.
    backend: Backend = "auto"
    # "auto" (bf16 on OpenVINO where the CPU has bf16 kernels, else fp32),
    # "fp32" or "bf16"; see ensemble.runtime.
    precision: Precision = "auto"
    # Where converted BlazeFace weights are cached (sha256-keyed file names).
    cache_dir: Path = Path("var/cache")
    limits: MediaLimits = field(default_factory=MediaLimits)
    faces: FaceConfig = field(default_factory=FaceConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(
                "backend must be 'auto', 'torch', 'onnxruntime' or 'openvino', "
                f"got {self.backend!r}"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if not self.members:
            raise ConfigError("select at least one detector member")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if len(set(self.members)) != len(self.members):
            raise ConfigError(f"members listed twice: {self.members}")
        if not 1 <= self.frames <= self.limits.max_frames:
            raise ConfigError(
                f"frames must be between 1 and {self.limits.max_frames}, got {self.frames}"
            )
