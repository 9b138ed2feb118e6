"""The B7 member's SSIM-mask guided blackout (after selimsef's DFDC winning
solution).

For a fake crop whose original (the real crop it was made from) is known,
the SSIM difference map between the two marks the manipulated region. The
original is aligned onto the fake by their BlazeFace keypoints (a similarity
transform; crops from different frames of a video do not coincide), then
``ensemble.align.ssim_difference`` gives ``(1 - SSIM) / 2`` per pixel; the
map of the crops as they are is kept instead when it is lower on average
(crops cut from the same frame already coincide, and keypoint noise would
misregister them). The region is where that difference is at least
``DIFF_THRESHOLD`` (after a small opening, to drop isolated noise). In a share
of fake samples, part of the region (the side of a random line through its
centre) is blacked out, so the model must find evidence elsewhere.

With no original, or when the two barely differ, a random face part (eyes,
nose, mouth or the keypoints' convex hull) is blacked out instead; without
keypoints, nothing is (the sample is used unchanged).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from ensemble.media import RGBImage
from ensemble.training.masks import FACE_PARTS, Mask, part_mask

# (1 - SSIM) / 2 at or above this marks a manipulated pixel.
DIFF_THRESHOLD = 0.1
# Fewer manipulated pixels than this share of the crop: treat as "no region".
MIN_REGION_FRACTION = 0.005
OPEN_KERNEL = 3


@dataclass(frozen=True)
class Blackout:
    image: RGBImage
    mask: Mask  # 1 where pixels were blacked out
    source: str  # "ssim", a face part name, or "none"


def _warp_onto(
    original: RGBImage,
    kp_original: Sequence[Sequence[float]],
    kp_fake: Sequence[Sequence[float]],
    shape: tuple[int, int],
) -> RGBImage:
    from ensemble.align import similarity_transform

    matrix = similarity_transform(kp_original, kp_fake)
    out = cv2.warpAffine(
        original,
        matrix,
        (shape[1], shape[0]),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )
    return np.asarray(out, np.uint8)


def manipulated_region(
    fake: RGBImage,
    original: RGBImage,
    kp_fake: Sequence[Sequence[float]] | None = None,
    kp_original: Sequence[Sequence[float]] | None = None,
) -> Mask:
    """1 where the fake differs structurally from its (aligned) original."""
    from ensemble.align import ssim_difference

    h, w = fake.shape[:2]
    if original.shape[:2] != (h, w):
        original = np.asarray(cv2.resize(original, (w, h), interpolation=cv2.INTER_AREA), np.uint8)
    diff = ssim_difference(fake, original)
    if kp_fake is not None and kp_original is not None:
        from ensemble.align import AlignmentError

        # Degenerate keypoints: compare the crops as they are.
        with contextlib.suppress(AlignmentError):
            aligned = ssim_difference(fake, _warp_onto(original, kp_original, kp_fake, (h, w)))
            # Keypoints are a few pixels noisy: crops cut from the same frame
            # (most dfdc_faces pairs) already coincide better than the
            # keypoint alignment makes them. Keep whichever registers better.
            if aligned.mean() < diff.mean():
                diff = aligned
    region = (diff >= DIFF_THRESHOLD).astype(np.uint8)
    kernel = np.ones((OPEN_KERNEL, OPEN_KERNEL), np.uint8)
    return np.asarray(cv2.morphologyEx(region, cv2.MORPH_OPEN, kernel), np.float32)


def _part_of(region: Mask, rng: np.random.Generator) -> Mask:
    """The pixels of ``region`` on one side of a random line through its centre."""
    ys, xs = np.nonzero(region)
    cx, cy = xs.mean(), ys.mean()
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[: region.shape[0], : region.shape[1]]
    side = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle) >= 0
    return np.asarray(region * side, np.float32)


def _apply(image: RGBImage, mask: npt.NDArray[np.floating]) -> RGBImage:
    out = image.copy()
    out[mask > 0] = 0
    return out


def ssim_blackout(
    fake: RGBImage,
    rng: np.random.Generator,
    *,
    original: RGBImage | None = None,
    kp_fake: Sequence[Sequence[float]] | None = None,
    kp_original: Sequence[Sequence[float]] | None = None,
) -> Blackout:
    """Black out part of the manipulated region of ``fake`` (see module docstring)."""
    h, w = fake.shape[:2]
    if original is not None:
        region = manipulated_region(fake, original, kp_fake, kp_original)
        if region.sum() >= MIN_REGION_FRACTION * h * w:
            mask = _part_of(region, rng)
            return Blackout(_apply(fake, mask), mask, "ssim")
    if kp_fake is None:
        return Blackout(fake, np.zeros((h, w), np.float32), "none")
    part = FACE_PARTS[int(rng.integers(len(FACE_PARTS)))]
    mask = part_mask(part, kp_fake, (h, w))
    return Blackout(_apply(fake, mask), mask, part)
