"""Self-blended images (Shiohara & Yamasaki, "Detecting Deepfakes with
Self-Blended Images", CVPR 2022), written from the paper's description.

A pseudo-fake is made from one real crop ``I``:

1. source-target generator: two copies of ``I``; one of them (chosen at
   random) gets colour changes (RGB shift, hue/saturation/value, brightness
   and contrast) and a frequency change (down-and-up sampling, or
   sharpening); the source is then slightly resized and translated, so its
   face no longer sits exactly on the target's;
2. mask generator: the face region from the keypoints
   (:func:`ensemble.training.masks.face_mask`; an ellipse without keypoints),
   deformed (random per-axis scaling about its centre, then an erosion or
   dilation), blurred twice with random Gaussian kernels, and multiplied by a
   blend ratio drawn from {0.25, 0.5, 0.75, 1, 1, 1};
3. blending: ``I_sb = source * M + target * (1 - M)``.

The result shows the statistical seams of face swaps (boundary, colour and
frequency mismatch) without any real manipulation method, so a detector
trained on it generalises to unseen ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from ensemble.media import RGBImage
from ensemble.training.masks import Mask, face_mask

BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
RGB_SHIFT = 20  # per channel, in grey levels
HUE_SHIFT = 10  # OpenCV hue units (0-179)
SAT_VAL_SHIFT = 20
BRIGHTNESS = 0.1
CONTRAST = 0.1
DOWNSCALE_RANGE = (0.4, 0.8)
SCALE_RANGE = (0.95, 1.05)
SHIFT_FRACTION = 0.03
MASK_SCALE_RANGE = (0.9, 1.1)
MASK_MORPH_FRACTION = 0.03  # erosion/dilation radius, share of the crop side
BLUR_FRACTION_RANGE = (0.02, 0.08)  # Gaussian kernel, share of the crop side


@dataclass(frozen=True)
class SelfBlend:
    image: RGBImage
    mask: Mask  # the blending mask M in [0, 1]
    ratio: float


def _colour(image: RGBImage, rng: np.random.Generator) -> RGBImage:
    img = image.astype(np.float32)
    img += rng.uniform(-RGB_SHIFT, RGB_SHIFT, size=3).astype(np.float32)
    hsv = cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.int32)
    hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-HUE_SHIFT, HUE_SHIFT + 1))) % 180
    hsv[..., 1:] += rng.integers(-SAT_VAL_SHIFT, SAT_VAL_SHIFT + 1, size=2).astype(np.int32)
    img = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    alpha = 1.0 + rng.uniform(-CONTRAST, CONTRAST)
    beta = 255.0 * rng.uniform(-BRIGHTNESS, BRIGHTNESS)
    img = (img - img.mean()) * alpha + img.mean() + beta
    out: RGBImage = np.clip(img, 0, 255).astype(np.uint8)
    return out


def _frequency(image: RGBImage, rng: np.random.Generator) -> RGBImage:
    h, w = image.shape[:2]
    if rng.random() < 0.5:
        s = rng.uniform(*DOWNSCALE_RANGE)
        small = cv2.resize(
            image, (max(round(w * s), 1), max(round(h * s), 1)), interpolation=cv2.INTER_AREA
        )
        return np.asarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), np.uint8)
    blurred = cv2.GaussianBlur(image, (0, 0), 1.0).astype(np.float32)
    amount = rng.uniform(0.5, 1.5)
    sharp = image.astype(np.float32) * (1 + amount) - blurred * amount
    out: RGBImage = np.clip(sharp, 0, 255).astype(np.uint8)
    return out


def _geometry(image: RGBImage, rng: np.random.Generator) -> RGBImage:
    h, w = image.shape[:2]
    s = rng.uniform(*SCALE_RANGE)
    tx, ty = rng.uniform(-SHIFT_FRACTION, SHIFT_FRACTION, size=2) * (w, h)
    matrix = np.array([[s, 0, (1 - s) * w / 2 + tx], [0, s, (1 - s) * h / 2 + ty]])
    out = cv2.warpAffine(
        image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    return np.asarray(out, np.uint8)


def _deform(mask: Mask, rng: np.random.Generator) -> Mask:
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return mask
    cx, cy = xs.mean(), ys.mean()
    sx, sy = rng.uniform(*MASK_SCALE_RANGE, size=2)
    matrix = np.array([[sx, 0, (1 - sx) * cx], [0, sy, (1 - sy) * cy]])
    out = cv2.warpAffine(mask, matrix, (w, h), flags=cv2.INTER_LINEAR)
    r = max(round(MASK_MORPH_FRACTION * min(h, w) * rng.random()), 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    out = cv2.erode(out, kernel) if rng.random() < 0.5 else cv2.dilate(out, kernel)
    return np.asarray(out, np.float32)


def _blur(mask: Mask, rng: np.random.Generator) -> Mask:
    side = min(mask.shape)
    out = mask
    for _ in range(2):
        k = max(round(rng.uniform(*BLUR_FRACTION_RANGE) * side) | 1, 3)
        out = np.asarray(cv2.GaussianBlur(out, (k, k), 0), np.float32)
    peak = float(out.max())
    # Re-normalise so the face centre still takes the full blend ratio.
    return np.asarray(out / peak if peak > 0 else out, np.float32)


def blend_mask(
    keypoints: Sequence[Sequence[float]] | None, shape: tuple[int, int], rng: np.random.Generator
) -> tuple[Mask, float]:
    """The SBI blending mask (deformed, blurred, times the blend ratio)."""
    ratio = float(BLEND_RATIOS[int(rng.integers(len(BLEND_RATIOS)))])
    mask = _blur(_deform(face_mask(keypoints, shape), rng), rng)
    return np.asarray(mask * ratio, np.float32), ratio


def self_blend(
    image: RGBImage,
    keypoints: Sequence[Sequence[float]] | None,
    rng: np.random.Generator,
) -> SelfBlend:
    """A self-blended pseudo-fake of a real crop (see the module docstring)."""
    source, target = image.copy(), image.copy()
    if rng.random() < 0.5:
        source = _frequency(_colour(source, rng), rng)
    else:
        target = _frequency(_colour(target, rng), rng)
    source = _geometry(source, rng)
    mask, ratio = blend_mask(keypoints, image.shape[:2], rng)
    m = mask[..., None]
    blended = source.astype(np.float32) * m + target.astype(np.float32) * (1 - m)
    out: RGBImage = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    return SelfBlend(out, mask, ratio)


def changed_fraction_inside(
    original: RGBImage, blended: RGBImage, region: npt.NDArray[np.floating], tol: int = 0
) -> float:
    """Share of changed pixels lying inside ``region`` (a diagnostic for tests
    and demos: self-blending must only touch the face)."""
    changed = np.abs(original.astype(np.int16) - blended.astype(np.int16)).max(axis=2) > tol
    if not changed.any():
        return 1.0
    return float((changed & (region > 0)).sum() / changed.sum())
