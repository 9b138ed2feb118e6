"""Face crops, one per detector member, all cut from the same detection.

Each member was designed (and, for published checkpoints, trained) on its own
crop geometry; feeding it another degrades it. The policies:

- ``square`` (polimi-ispl/icpr2020dfdc's "scale" policy): the box grows by
  ``margin`` times its width on every side, is clipped to the frame, and then
  becomes the square of its longer side around its centre; the part of that
  square outside the frame is black. Resized to the member's input size.
- ``isotropic`` (selimsef/dfdc_deepfake_challenge): the box grows by
  ``margin`` times its width and height on each side and is clipped to the
  frame; the crop's longer side is resized to the input size keeping its aspect
  ratio, and the result is centred on a black square.

``shift`` moves the box up (negative) or down by that many box heights before
either policy applies, and a negative ``margin`` shrinks the box: together
they frame a crop like a training set that was cut around another detector's
boxes (``python -m bench.crop_framing`` measures a dataset's framing; a member's
manifest records the policy its weights were trained for).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from ensemble.errors import ConfigError
from ensemble.media import RGBImage

Box = tuple[float, float, float, float]


# A margin below this would shrink the box to (nearly) nothing.
MIN_MARGIN = -0.4
MAX_MARGIN = 2.0
MAX_SHIFT = 1.0


@dataclass(frozen=True)
class CropPolicy:
    kind: Literal["square", "isotropic"]
    margin: float
    # Vertical move of the box before cropping, in box heights (negative: up).
    shift: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("square", "isotropic"):
            raise ConfigError(f"unknown crop policy {self.kind!r}")
        if not MIN_MARGIN <= self.margin <= MAX_MARGIN:
            raise ConfigError(f"margin must be in [{MIN_MARGIN}, {MAX_MARGIN}], got {self.margin}")
        if not -MAX_SHIFT <= self.shift <= MAX_SHIFT:
            raise ConfigError(f"shift must be in [-{MAX_SHIFT}, {MAX_SHIFT}], got {self.shift}")
        if abs(self.shift) > 0.5 + self.margin + 1e-9:
            # The region would leave the face box's centre out (up to all of
            # the face, past the frame's edge an empty region): something
            # other than the face would be scored.
            raise ConfigError(
                f"shift {self.shift} moves the crop off the face with margin {self.margin}: "
                "keep |shift| at most 0.5 + margin"
            )

    def to_dict(self) -> dict[str, float | str]:
        return {"kind": self.kind, "margin": self.margin, "shift": self.shift}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> CropPolicy:
        """The policy a manifest's ``crop`` entry names (ConfigError if malformed)."""
        kind = str(data.get("kind"))
        if kind not in ("square", "isotropic"):
            raise ConfigError(f"unknown crop policy {kind!r}")
        return cls(
            "square" if kind == "square" else "isotropic",
            float(str(data.get("margin"))),
            float(str(data.get("shift", 0.0))),
        )

    @classmethod
    def parse(cls, text: str) -> CropPolicy:
        """``KIND:MARGIN[:SHIFT]``, e.g. ``square:0.05:-0.06`` (ConfigError if malformed)."""
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise ConfigError(f"crop policy {text!r} is not KIND:MARGIN[:SHIFT]")
        try:
            numbers = [float(p) for p in parts[1:]]
        except ValueError:
            raise ConfigError(f"crop policy {text!r}: margin and shift must be numbers") from None
        return cls.from_dict(
            {"kind": parts[0], "margin": numbers[0], "shift": numbers[1] if len(numbers) > 1 else 0}
        )


def _resize(image: RGBImage, width: int, height: int, upscale: int) -> RGBImage:
    shrinking = width * height < image.shape[0] * image.shape[1]
    interp = cv2.INTER_AREA if shrinking else upscale
    out: RGBImage = np.asarray(cv2.resize(image, (width, height), interpolation=interp), np.uint8)
    return out


def _grow(box: Box, dx: float, dy: float, h: int, w: int) -> tuple[int, int, int, int]:
    """The box grown by ``dx``, ``dy`` on each side, inside the frame: every
    edge clamped to it (a negative end used to slice from the far side)."""
    x0, y0, x1, y1 = box
    gx0 = min(max(round(x0 - dx), 0), w)
    gy0 = min(max(round(y0 - dy), 0), h)
    return gx0, gy0, max(min(round(x1 + dx), w), gx0), max(min(round(y1 + dy), h), gy0)


def crop_region(
    frame_shape: tuple[int, ...], box: Box, policy: CropPolicy
) -> tuple[int, int, int, int]:
    """The frame region :func:`crop_face` cuts for ``box``, ``x0, y0, x1, y1``:
    for ``square`` a square that may reach past the frame's edges (that part
    is black in the crop); otherwise the grown box, inside the frame."""
    h, w = frame_shape[:2]
    bw = box[2] - box[0]
    bh = box[3] - box[1]
    if policy.shift:
        box = (box[0], box[1] + policy.shift * bh, box[2], box[3] + policy.shift * bh)
    if policy.kind == "square":
        x0, y0, x1, y1 = _grow(box, policy.margin * bw, policy.margin * bw, h, w)
        side = max(x1 - x0, y1 - y0, 1)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        sx0, sy0 = round(cx - side / 2), round(cy - side / 2)
        return sx0, sy0, sx0 + side, sy0 + side
    return _grow(box, policy.margin * bw, policy.margin * bh, h, w)


def crop_face(frame: RGBImage, box: Box, policy: CropPolicy, size: int) -> RGBImage:
    """Cut one face from ``frame`` as ``policy`` says, as a ``size``x``size`` RGB image."""
    h, w = frame.shape[:2]
    if policy.kind == "square":
        sx0, sy0, sx1, _ = crop_region(frame.shape, box, policy)
        side = sx1 - sx0
        canvas = np.zeros((side, side, 3), dtype=np.uint8)
        fx0, fy0 = max(sx0, 0), max(sy0, 0)
        fx1, fy1 = min(sx0 + side, w), min(sy0 + side, h)
        if fx1 > fx0 and fy1 > fy0:
            canvas[fy0 - sy0 : fy1 - sy0, fx0 - sx0 : fx1 - sx0] = frame[fy0:fy1, fx0:fx1]
        return _resize(canvas, size, size, cv2.INTER_LINEAR)

    x0, y0, x1, y1 = crop_region(frame.shape, box, policy)
    region = frame[y0:y1, x0:x1]
    if region.size == 0:
        return np.zeros((size, size, 3), dtype=np.uint8)
    rh, rw = region.shape[:2]
    scale = size / max(rh, rw)
    nw, nh = max(round(rw * scale), 1), max(round(rh * scale), 1)
    resized = _resize(region, nw, nh, cv2.INTER_CUBIC)
    out = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out
