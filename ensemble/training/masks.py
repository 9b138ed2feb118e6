"""Face masks and face parts from the six BlazeFace keypoints.

BlazeFace gives right eye, left eye, nose tip, mouth centre, right and left
ear tragion. Their convex hull covers the middle of the face but not the
forehead or the chin, so the face mask adds two points estimated from the
face's vertical axis (eyes to mouth): a forehead point above the eyes and a
chin point below the mouth. When a crop has no keypoints (no face found in
it), the mask is an ellipse centred in the crop: the dataset crops are
centred on the detected face with a known margin, so the face fills the
middle of the crop.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

Mask = npt.NDArray[np.float32]

RIGHT_EYE, LEFT_EYE, NOSE, MOUTH, RIGHT_EAR, LEFT_EAR = range(6)
# Forehead and chin, in units of the eyes-to-mouth distance along the face axis.
FOREHEAD_REACH = 0.9
CHIN_REACH = 0.7
# Fallback ellipse: semi-axes as fractions of the crop side.
ELLIPSE_AXES = (0.30, 0.38)
ELLIPSE_CENTRE = (0.5, 0.5)


def _points(keypoints: Sequence[Sequence[float]]) -> npt.NDArray[np.float64]:
    return np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)


def face_outline(keypoints: Sequence[Sequence[float]]) -> npt.NDArray[np.float64]:
    """The keypoints plus estimated forehead and chin points."""
    kp = _points(keypoints)
    eyes = (kp[RIGHT_EYE] + kp[LEFT_EYE]) / 2
    axis = kp[MOUTH] - eyes
    forehead = eyes - FOREHEAD_REACH * axis
    chin = kp[MOUTH] + CHIN_REACH * axis
    return np.vstack([kp, forehead, chin])


def hull_mask(points: npt.ArrayLike, shape: tuple[int, int]) -> Mask:
    """1 inside the convex hull of ``points`` (x, y pixels), 0 outside."""
    mask = np.zeros(shape, dtype=np.uint8)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    hull = cv2.convexHull(np.round(pts).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1)
    return mask.astype(np.float32)


def ellipse_mask(shape: tuple[int, int]) -> Mask:
    """The fallback face mask: a centred upright ellipse."""
    h, w = shape
    mask = np.zeros(shape, dtype=np.uint8)
    centre = (round(ELLIPSE_CENTRE[0] * w), round(ELLIPSE_CENTRE[1] * h))
    axes = (round(ELLIPSE_AXES[0] * w), round(ELLIPSE_AXES[1] * h))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, thickness=-1)
    return mask.astype(np.float32)


def face_mask(keypoints: Sequence[Sequence[float]] | None, shape: tuple[int, int]) -> Mask:
    """The face region of a crop: hull of :func:`face_outline`, or the ellipse."""
    if keypoints is None:
        return ellipse_mask(shape)
    return hull_mask(face_outline(keypoints), shape)


def part_mask(part: str, keypoints: Sequence[Sequence[float]], shape: tuple[int, int]) -> Mask:
    """A face part: ``eyes`` (a band over both eyes), ``nose``, ``mouth``
    (discs scaled by the eye distance) or ``hull`` (the keypoints' hull)."""
    kp = _points(keypoints)
    eye_dist = float(np.linalg.norm(kp[LEFT_EYE] - kp[RIGHT_EYE])) or 1.0
    mask = np.zeros(shape, dtype=np.uint8)
    if part == "eyes":
        r = max(round(0.25 * eye_dist), 1)
        a = tuple(int(v) for v in np.round(kp[RIGHT_EYE]))
        b = tuple(int(v) for v in np.round(kp[LEFT_EYE]))
        cv2.line(mask, a, b, 1, thickness=2 * r)
        cv2.circle(mask, a, r, 1, -1)
        cv2.circle(mask, b, r, 1, -1)
    elif part in ("nose", "mouth"):
        centre = kp[NOSE] if part == "nose" else kp[MOUTH]
        r = max(round((0.25 if part == "nose" else 0.35) * eye_dist), 1)
        cv2.circle(mask, tuple(int(v) for v in np.round(centre)), r, 1, -1)
    elif part == "hull":
        return hull_mask(kp, shape)
    else:
        raise ValueError(f"unknown face part {part!r}")
    return mask.astype(np.float32)


FACE_PARTS = ("eyes", "nose", "mouth", "hull")
