"""SSIM masks between keypoint-aligned face crops.

- temporal: a person's face against the same person's face in the previous
  sampled frame, showing what changed between them;
- reference: the submission's face against the same face in a reference (the
  claimed original) at the matching time, showing where they differ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from ensemble.align import (
    SSIM_WINDOW,
    align_face,
    apply_refinement,
    refine_warp,
    ssim_difference,
)
from ensemble.blazeface import Detection
from ensemble.media import RGBImage
from explain.geometry import FloatMap
from explain.render import blend, side_by_side

# SSIM differences are small numbers: (1 - SSIM) / 2 reaches 0.5 only where
# the structure is unrelated. The colour map spans [0, SSIM_DISPLAY_MAX].
SSIM_DISPLAY_MAX = 0.5
# Weight of the colour map over the face in the third panel.
SSIM_OVERLAY_ALPHA = 0.55


@dataclass(frozen=True)
class SsimMask:
    """Two aligned crops, their difference map (``[0, 1]``) and its mean."""

    first: RGBImage
    second: RGBImage
    difference: FloatMap
    mean: float

    def panel(self) -> RGBImage:
        """first | second | difference over second."""
        shown = np.clip(self.difference / SSIM_DISPLAY_MAX, 0.0, 1.0).astype(np.float32)
        return side_by_side(
            [self.first, self.second, blend(self.second, shown, SSIM_OVERLAY_ALPHA)]
        )


def ssim_mask(
    image_a: RGBImage,
    keypoints_a: Sequence[tuple[float, float]],
    image_b: RGBImage,
    keypoints_b: Sequence[tuple[float, float]],
    size: int,
) -> SsimMask:
    """Align both faces by their keypoints to ``size`` x ``size``, refine the
    second onto the first by intensity (ECC), and compare them."""
    a = align_face(image_a, keypoints_a, size)
    b = align_face(image_b, keypoints_b, size)
    # Where a face ran past its frame's edge its crop is black padding, not a
    # difference: the refinement ignores it, and it is left out of the map
    # and of its mean.
    inside_a = _inside(image_a.shape, keypoints_a, size)
    inside_b = _inside(image_b.shape, keypoints_b, size)
    warp = refine_warp(a, b, inside_b)
    if warp is not None:
        b = apply_refinement(b, warp)
        inside_b = apply_refinement(inside_b.astype(np.uint8), warp, replicate=False) > 0
    diff = ssim_difference(a, b).astype(np.float32)
    # Less an SSIM window's width: the window carries the padding's edge in.
    kernel = np.ones((SSIM_WINDOW, SSIM_WINDOW), np.uint8)
    compared = cv2.erode((inside_a & inside_b).astype(np.uint8), kernel, borderValue=1) > 0
    diff[~compared] = 0.0
    mean = float(diff[compared].mean()) if compared.any() else 0.0
    return SsimMask(a, b, diff, mean)


def _inside(
    shape: tuple[int, ...], keypoints: Sequence[tuple[float, float]], size: int
) -> npt.NDArray[np.bool_]:
    """Pixels of the aligned crop that come from inside the frame."""
    ones = np.full((*shape[:2], 3), 255, np.uint8)
    inside: npt.NDArray[np.bool_] = align_face(ones, keypoints, size)[..., 0] == 255
    return inside


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def matching_face(
    box: tuple[float, float, float, float],
    shape: tuple[int, ...],
    candidates: Sequence[Detection],
    candidate_shape: tuple[int, ...],
) -> Detection | None:
    """The candidate face in the reference frame that corresponds to ``box``
    in the submission frame: boxes compared in frame-relative coordinates (the
    two may differ in resolution), highest overlap first, then nearest centre.
    ``None`` when no candidate overlaps the box or has its centre within one
    face size of it: a face elsewhere is another person (or the reference is
    framed otherwise), and comparing them would light up the whole face."""
    h, w = shape[:2]
    ch, cw = candidate_shape[:2]
    rel = (box[0] / w, box[1] / h, box[2] / w, box[3] / h)
    centre = ((rel[0] + rel[2]) / 2, (rel[1] + rel[3]) / 2)
    size = max(rel[2] - rel[0], rel[3] - rel[1])

    def key(d: Detection) -> tuple[float, float]:
        r = (d.box[0] / cw, d.box[1] / ch, d.box[2] / cw, d.box[3] / ch)
        c = ((r[0] + r[2]) / 2, (r[1] + r[3]) / 2)
        return -_iou(rel, r), math.hypot(c[0] - centre[0], c[1] - centre[1])

    near = [d for d in candidates if (k := key(d))[0] < 0 or k[1] <= size]
    return min(near, key=key) if near else None
