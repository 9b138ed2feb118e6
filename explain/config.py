"""Frozen configuration of the explanations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ArtifactKind = Literal[
    "face", "frame", "gradcam", "attention", "ssim_temporal", "ssim_reference", "chart"
]
ALL_KINDS: tuple[ArtifactKind, ...] = (
    "face",
    "frame",
    "gradcam",
    "attention",
    "ssim_temporal",
    "ssim_reference",
    "chart",
)
ImageFormat = Literal["jpeg", "webp"]

MAX_TOP_K = 64
MIN_SIDE = 64
MAX_SIDE = 4096
MIN_FACE_SIDE = 64
MAX_FACE_MARGIN = 2.0


@dataclass(frozen=True)
class ExplainConfig:
    """What to explain and how large the files may be.

    ``top_k`` most suspicious frames per person (plus the least suspicious one
    when ``include_least_suspicious``) get a Grad-CAM overlay from every
    member; every analysed face gets an attention overlay from members that
    have an attention map. Heat maps are drawn on the face crop (``face``:
    a square of ``face_side`` pixels around the face box, ``face_margin`` of
    the box's longer side added on each side), the crop a viewer shows them
    on; ``frame`` images (the whole sampled frame, at most ``frame_side``
    pixels) give the context. Images are at most ``max_side`` pixels on their
    longer side, encoded as ``image_format`` at ``quality``.
    """

    top_k: int = 8
    include_least_suspicious: bool = True
    kinds: tuple[ArtifactKind, ...] = ALL_KINDS
    max_side: int = 1280
    image_format: ImageFormat = "jpeg"
    quality: int = 85
    # Weight of the colour map where it is laid over the face (0: invisible, 1: opaque).
    overlay_alpha: float = 0.45
    # Side of the face crops the heat maps are drawn on, and the margin around the box.
    face_side: int = 256
    face_margin: float = 0.3
    # Longer side of the whole-frame context images.
    frame_side: int = 480
    # Side of the keypoint-aligned face crops compared by SSIM.
    ssim_size: int = 224
    # Crops per Grad-CAM forward/backward pass.
    gradcam_batch: int = 8
    chart_width_px: int = 1200
    # Height of each panel of the chart (the ensemble, then one per member).
    chart_panel_height_px: int = 220
    chart_dpi: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be between 1 and {MAX_TOP_K}, got {self.top_k}")
        unknown = [k for k in self.kinds if k not in ALL_KINDS]
        if unknown:
            raise ValueError(f"unknown artifact kinds {unknown}; known: {', '.join(ALL_KINDS)}")
        if not MIN_SIDE <= self.max_side <= MAX_SIDE:
            raise ValueError(f"max_side must be between {MIN_SIDE} and {MAX_SIDE}")
        if self.image_format not in ("jpeg", "webp"):
            raise ValueError(f"image_format must be 'jpeg' or 'webp', got {self.image_format!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be between 1 and 100, got {self.quality}")
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ValueError(f"overlay_alpha must be in [0, 1], got {self.overlay_alpha}")
        if not MIN_FACE_SIDE <= self.face_side <= MAX_SIDE:
            raise ValueError(f"face_side must be between {MIN_FACE_SIDE} and {MAX_SIDE}")
        if not 0.0 <= self.face_margin <= MAX_FACE_MARGIN:
            raise ValueError(f"face_margin must be in [0, {MAX_FACE_MARGIN}]")
        if not MIN_SIDE <= self.frame_side <= MAX_SIDE:
            raise ValueError(f"frame_side must be between {MIN_SIDE} and {MAX_SIDE}")
        if not 32 <= self.ssim_size <= 1024:
            raise ValueError(f"ssim_size must be between 32 and 1024, got {self.ssim_size}")
        if self.gradcam_batch < 1:
            raise ValueError(f"gradcam_batch must be positive, got {self.gradcam_batch}")
        if min(self.chart_width_px, self.chart_panel_height_px, self.chart_dpi) < 1:
            raise ValueError("chart sizes must be positive")
