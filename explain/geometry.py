"""Where a member's face crop came from in its frame.

:func:`ensemble.crops.crop_face` cuts a region of the frame, pads it to a
square and resizes it. :func:`placement` describes that as an axis-aligned
map from crop pixels to frame pixels plus the frame region that holds real
(not padding) pixels, so maps computed on the crop (Grad-CAM, attention) can
be drawn back onto the frame exactly where the model saw them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from ensemble.crops import Box, CropPolicy, crop_region

FloatMap = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Placement:
    """Frame pixel ``(X, Y) = (sx * u + bx, sy * v + by)`` for crop pixel
    ``(u, v)`` (pixel centres); ``roi`` is the frame region ``(x0, y0, x1,
    y1)`` (exclusive ends) that the crop shows."""

    sx: float
    sy: float
    bx: float
    by: float
    roi: tuple[int, int, int, int]

    def scaled(self, factor: float) -> Placement:
        """The same placement on the frame resized by ``factor``."""
        x0, y0, x1, y1 = self.roi
        return Placement(
            sx=self.sx * factor,
            sy=self.sy * factor,
            bx=(self.bx + 0.5) * factor - 0.5,
            by=(self.by + 0.5) * factor - 0.5,
            roi=(
                int(np.floor(x0 * factor)),
                int(np.floor(y0 * factor)),
                int(np.ceil(x1 * factor)),
                int(np.ceil(y1 * factor)),
            ),
        )

    def to_frame(self, u: float, v: float) -> tuple[float, float]:
        """The frame point of crop point ``(u, v)``."""
        return self.sx * u + self.bx, self.sy * v + self.by


def placement(frame_shape: tuple[int, ...], box: Box, policy: CropPolicy, size: int) -> Placement:
    """The placement of ``crop_face(frame, box, policy, size)`` in its frame."""
    h, w = frame_shape[:2]
    if policy.kind == "square":
        sx0, sy0, sx1, _ = crop_region(frame_shape, box, policy)
        side = sx1 - sx0
        scale = side / size
        roi = (max(sx0, 0), max(sy0, 0), min(sx0 + side, w), min(sy0 + side, h))
        return Placement(scale, scale, sx0 + 0.5 * scale - 0.5, sy0 + 0.5 * scale - 0.5, roi)
    x0, y0, x1, y1 = crop_region(frame_shape, box, policy)
    rw, rh = max(x1 - x0, 1), max(y1 - y0, 1)
    scale = size / max(rh, rw)
    nw, nh = max(round(rw * scale), 1), max(round(rh * scale), 1)
    top, left = (size - nh) // 2, (size - nw) // 2
    sx, sy = rw / nw, rh / nh
    return Placement(
        sx, sy, x0 + (0.5 - left) * sx - 0.5, y0 + (0.5 - top) * sy - 0.5, (x0, y0, x1, y1)
    )


def crop_map_to_roi(heat: FloatMap, where: Placement) -> FloatMap:
    """``heat`` (a map over the crop) resampled onto the frame region
    ``where.roi``: shape ``(y1 - y0, x1 - x0)``."""
    x0, y0, x1, y1 = where.roi
    # Inverse map: ROI pixel (i, j) is frame (x0 + i, y0 + j), crop ((X - bx) / sx, ...).
    inverse = np.array(
        [
            [1.0 / where.sx, 0.0, (x0 - where.bx) / where.sx],
            [0.0, 1.0 / where.sy, (y0 - where.by) / where.sy],
        ]
    )
    out: FloatMap = np.asarray(
        cv2.warpAffine(
            np.asarray(heat, dtype=np.float32),
            inverse,
            (max(x1 - x0, 1), max(y1 - y0, 1)),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        ),
        dtype=np.float32,
    )
    return out
