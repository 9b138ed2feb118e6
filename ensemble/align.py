"""Face alignment by BlazeFace keypoints, and SSIM difference maps.

Two crops of a face can only be compared pixel by pixel once the face sits in
the same place in both. :func:`align_face` warps a frame so that the six
BlazeFace keypoints (right eye, left eye, nose tip, mouth, right ear, left ear)
land as near as possible to a canonical template: the least-squares similarity
transform (rotation, uniform scale, translation; Umeyama 1991) from the
keypoints to the template, applied with ``cv2.warpAffine``.

:func:`ssim_difference` turns two aligned images into a map of where they
differ: ``(1 - SSIM) / 2`` per pixel, from scikit-image's
``structural_similarity(full=True)`` with an explicit ``data_range``.

Used by the explanations (temporal and reference SSIM masks) and by training
(SSIM-mask guided augmentation), so it lives in the detection core.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt
from skimage.metrics import structural_similarity

from ensemble.errors import TrusttraceError
from ensemble.media import RGBImage

FloatArray = npt.NDArray[np.float64]

# Where the six keypoints of a frontal face sit, as fractions of the face box
# (x, y): measured on BlazeFace detections of frontal faces and made symmetric.
CANONICAL_KEYPOINTS: tuple[tuple[float, float], ...] = (
    (0.30, 0.30),  # right eye (the subject's right: the left of the image)
    (0.70, 0.30),  # left eye
    (0.50, 0.52),  # nose tip
    (0.50, 0.72),  # mouth
    (0.05, 0.38),  # right ear tragion
    (0.95, 0.38),  # left ear tragion
)
# The ears move most when the head turns and BlazeFace places them least
# precisely; they count half as much as the eyes, nose and mouth.
KEYPOINT_WEIGHTS: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 0.5, 0.5)
# Share of the aligned crop's side left around the canonical face box on each side.
ALIGN_MARGIN = 0.2
# scikit-image's default Gaussian-free window; odd and at most the image side.
SSIM_WINDOW = 7


# Intensity-based refinement (ECC, with OpenCV's default 5-pixel Gaussian
# pre-filter) after keypoint alignment: its iterations, its convergence
# threshold, and the largest correction accepted (beyond it the refinement is
# judged to have diverged).
ECC_ITERATIONS = 60
ECC_EPSILON = 1e-5
# OpenCV's default smoothing before ECC (given explicitly with a mask).
ECC_GAUSS_SIZE = 5
ECC_MAX_SHIFT_FRACTION = 0.15
ECC_MAX_LINEAR_DEVIATION = 0.25


class AlignmentError(TrusttraceError, ValueError):
    """Keypoints from which no similarity transform can be estimated."""


def similarity_transform(
    src: npt.ArrayLike, dst: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> FloatArray:
    """The 2x3 similarity matrix ``M`` minimising ``sum w_i |M [src_i, 1] - dst_i|^2``.

    Weighted Umeyama (1991) estimate: rotation, one scale and a translation,
    never a reflection.
    """
    s = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    d = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if s.shape != d.shape or len(s) < 2:
        raise AlignmentError(f"need two matching sets of >= 2 points, got {s.shape} and {d.shape}")
    w = np.ones(len(s)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(s),) or np.any(w < 0) or w.sum() <= 0:
        raise AlignmentError("weights must be one non-negative number per point, not all zero")
    w = w / w.sum()
    mu_s = w @ s
    mu_d = w @ d
    sc, dc = s - mu_s, d - mu_d
    var_s = float(w @ (sc**2).sum(axis=1))
    if var_s < 1e-12:
        raise AlignmentError("the keypoints coincide; the face cannot be aligned")
    cov = (dc * w[:, None]).T @ sc
    u, sig, vt = np.linalg.svd(cov)
    flip = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        flip[1, 1] = -1.0
    rot = u @ flip @ vt
    scale = float(np.trace(np.diag(sig) @ flip)) / var_s
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_d - scale * rot @ mu_s
    return matrix


def template_points(size: int, margin: float = ALIGN_MARGIN) -> FloatArray:
    """The canonical keypoints in pixels of a ``size`` x ``size`` aligned crop."""
    t = np.asarray(CANONICAL_KEYPOINTS, dtype=np.float64)
    return (margin + (1.0 - 2.0 * margin) * t) * size


def alignment_matrix(
    keypoints: Sequence[tuple[float, float]], size: int, margin: float = ALIGN_MARGIN
) -> FloatArray:
    """The 2x3 matrix taking frame pixels to the aligned ``size`` x ``size`` crop."""
    return similarity_transform(keypoints, template_points(size, margin), KEYPOINT_WEIGHTS)


def align_face(
    image: RGBImage,
    keypoints: Sequence[tuple[float, float]],
    size: int,
    margin: float = ALIGN_MARGIN,
) -> RGBImage:
    """The face whose six BlazeFace ``keypoints`` (pixels of ``image``) are
    given, warped onto the canonical template as a ``size`` x ``size`` crop.
    Parts outside ``image`` are black."""
    matrix = alignment_matrix(keypoints, size, margin)
    out: RGBImage = np.asarray(
        cv2.warpAffine(
            image,
            matrix,
            (size, size),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(0, 0, 0),
        ),
        dtype=np.uint8,
    )
    return out


def refine_alignment(fixed: RGBImage, moving: RGBImage) -> RGBImage:
    """``moving`` warped (affine) so that it best matches ``fixed`` pixel for
    pixel (OpenCV's ECC maximisation on grey levels).

    Keypoints place two faces only roughly: a swapped face has other landmarks
    than the footage around it. Refining on the whole crop (hair, ears,
    background) aligns what did not change. When ECC fails or proposes a large
    correction, ``moving`` is returned as it is.
    """
    warp = refine_warp(fixed, moving)
    return moving if warp is None else apply_refinement(moving, warp)


def refine_warp(
    fixed: RGBImage, moving: RGBImage, valid: npt.NDArray[np.bool_] | None = None
) -> npt.NDArray[np.float32] | None:
    """The ECC warp of :func:`refine_alignment` (for ``WARP_INVERSE_MAP``), or
    ``None`` when ECC fails or proposes a large correction. ``valid`` marks
    the pixels of ``moving`` that hold picture (not padding) for ECC to use."""
    if fixed.shape != moving.shape:
        raise ValueError(f"images differ in shape: {fixed.shape} vs {moving.shape}")
    g_fixed = cv2.cvtColor(fixed, cv2.COLOR_RGB2GRAY).astype(np.float32)
    g_moving = cv2.cvtColor(moving, cv2.COLOR_RGB2GRAY).astype(np.float32)
    warp = np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ECC_ITERATIONS, ECC_EPSILON)
    mask = np.full(g_moving.shape, 1, np.uint8) if valid is None else valid.astype(np.uint8)
    try:
        _, found = cv2.findTransformECC(
            g_fixed, g_moving, warp, cv2.MOTION_AFFINE, criteria, mask, ECC_GAUSS_SIZE
        )
    except cv2.error:
        return None  # no convergence: keep the keypoint alignment
    warp = np.asarray(found, dtype=np.float32)
    h, w = fixed.shape[:2]
    linear_off = float(np.abs(warp[:, :2] - np.eye(2)).max())
    shift = float(np.abs(warp[:, 2]).max())
    if linear_off > ECC_MAX_LINEAR_DEVIATION or shift > ECC_MAX_SHIFT_FRACTION * max(h, w):
        return None
    return warp


def apply_refinement(
    image: npt.NDArray[np.uint8], warp: npt.NDArray[np.float32], *, replicate: bool = True
) -> npt.NDArray[np.uint8]:
    """``image`` (a crop or a mask) moved by a :func:`refine_warp` warp; the
    border is replicated, or 0 with ``replicate=False``."""
    h, w = image.shape[:2]
    out: npt.NDArray[np.uint8] = np.asarray(
        cv2.warpAffine(
            image,
            warp,
            (w, h),
            flags=(cv2.INTER_LINEAR if replicate else cv2.INTER_NEAREST) | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE if replicate else cv2.BORDER_CONSTANT,
            borderValue=0,
        ),
        dtype=np.uint8,
    )
    return out


def ssim_difference(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic]) -> FloatArray:
    """Per-pixel dissimilarity of two same-size images, in ``[0, 1]``.

    ``(1 - SSIM) / 2`` from scikit-image's full SSIM map, averaged over colour
    channels. ``data_range`` is explicit: 255 for ``uint8``, else 1.0 (floats
    are expected in ``[0, 1]``).
    """
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3) or min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"need a 2-D or HxWxC image of side >= {SSIM_WINDOW}, got {a.shape}")
    data_range = 255.0 if a.dtype == np.uint8 else 1.0
    # float32 takes scikit-image about 40% less time; the map differs by rounding only.
    fa = np.asarray(a, dtype=np.float32)
    fb = np.asarray(b, dtype=np.float32)
    channel_axis = 2 if fa.ndim == 3 else None
    _, full = structural_similarity(  # type: ignore[no-untyped-call]
        fa,
        fb,
        win_size=SSIM_WINDOW,
        data_range=data_range,
        channel_axis=channel_axis,
        full=True,
    )
    ssim_map = np.asarray(full, dtype=np.float64)
    if ssim_map.ndim == 3:
        ssim_map = ssim_map.mean(axis=2)
    out: FloatArray = np.clip((1.0 - ssim_map) / 2.0, 0.0, 1.0)
    return out
