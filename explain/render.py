"""Colour-map overlays and bounded image files."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

from ensemble.media import RGBImage
from explain.config import ExplainConfig
from explain.geometry import FloatMap, Placement, crop_map_to_roi

# The outline drawn around the region a model saw, as a share of the image's long side.
OUTLINE_FRACTION = 0.002
OUTLINE_RGB = (255, 255, 255)
_SUFFIX = {"jpeg": ".jpg", "webp": ".webp"}
_MEDIA_TYPE = {"jpeg": "image/jpeg", "webp": "image/webp"}
_PIL_FORMAT = {"jpeg": "JPEG", "webp": "WEBP"}


def colorize(heat: FloatMap) -> RGBImage:
    """A ``[0, 1]`` map as an RGB jet colour map (blue low, red high)."""
    scaled = np.clip(np.nan_to_num(heat) * 255.0, 0, 255).astype(np.uint8)
    bgr = cv2.applyColorMap(scaled, cv2.COLORMAP_JET)
    out: RGBImage = np.ascontiguousarray(bgr[..., ::-1])
    return out


def blend(image: RGBImage, heat: FloatMap, alpha: float) -> RGBImage:
    """``heat`` (same height and width as ``image``) laid over ``image``."""
    colour = colorize(heat).astype(np.float32)
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * colour
    result: RGBImage = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return result


def fit(image: RGBImage, max_side: int) -> tuple[RGBImage, float]:
    """``image`` shrunk so its longer side is at most ``max_side``, and the factor."""
    h, w = image.shape[:2]
    factor = min(1.0, max_side / max(h, w))
    if factor >= 1.0:
        return image, 1.0
    size = (max(round(w * factor), 1), max(round(h * factor), 1))
    out: RGBImage = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), np.uint8)
    return out, factor


def overlay_on_frame(frame: RGBImage, heat: FloatMap, where: Placement, alpha: float) -> RGBImage:
    """A copy of ``frame`` with the crop map ``heat`` drawn over the region the crop shows."""
    out = frame.copy()
    x0, y0, x1, y1 = where.roi
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, frame.shape[1]), min(y1, frame.shape[0])
    if x1 <= x0 or y1 <= y0:
        return out
    clipped = Placement(where.sx, where.sy, where.bx, where.by, (x0, y0, x1, y1))
    roi_heat = crop_map_to_roi(heat, clipped)
    out[y0:y1, x0:x1] = blend(out[y0:y1, x0:x1], roi_heat, alpha)
    thickness = max(1, round(OUTLINE_FRACTION * max(frame.shape[:2])))
    cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), OUTLINE_RGB, thickness)
    return out


def side_by_side(images: list[RGBImage], gap: int = 4) -> RGBImage:
    """Same-height images in a row, separated by white gaps."""
    h = images[0].shape[0]
    parts: list[npt.NDArray[np.uint8]] = []
    for i, img in enumerate(images):
        if i:
            parts.append(np.full((h, gap, 3), 255, dtype=np.uint8))
        parts.append(img)
    out: RGBImage = np.concatenate(parts, axis=1)
    return out


def encode(image: RGBImage, config: ExplainConfig) -> tuple[bytes, int, int]:
    """``image`` as JPEG or WebP at the configured quality and maximum side,
    with the width and height it was encoded at."""
    fitted, _ = fit(image, config.max_side)
    buf = io.BytesIO()
    Image.fromarray(fitted).save(
        buf, format=_PIL_FORMAT[config.image_format], quality=config.quality
    )
    return buf.getvalue(), int(fitted.shape[1]), int(fitted.shape[0])


def image_suffix(config: ExplainConfig) -> str:
    return _SUFFIX[config.image_format]


def image_media_type(config: ExplainConfig) -> str:
    return _MEDIA_TYPE[config.image_format]


def write_image(path: Path, image: RGBImage, config: ExplainConfig) -> tuple[int, int]:
    """Write ``image`` (bounded, encoded) to ``path``; its width and height as written."""
    data, width, height = encode(image, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return width, height


def face_square(box: tuple[float, float, float, float], margin: float) -> tuple[int, int, int]:
    """The square ``(x0, y0, side)`` in frame pixels around ``box``: its
    longer side plus ``margin`` of it on each side, centred on the box."""
    x0, y0, x1, y1 = box
    side = max(round(max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)), 2)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return round(cx - side / 2.0), round(cy - side / 2.0), side


def cut_square(frame: RGBImage, square: tuple[int, int, int]) -> RGBImage:
    """The square region of ``frame``; parts outside the frame are black."""
    x0, y0, side = square
    h, w = frame.shape[:2]
    out: RGBImage = np.zeros((side, side, 3), dtype=np.uint8)
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if fx1 > fx0 and fy1 > fy0:
        out[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0] = frame[fy0:fy1, fx0:fx1]
    return out


def heat_on_square(
    face: RGBImage, square: tuple[int, int, int], heat: FloatMap, where: Placement
) -> RGBImage:
    """``face`` (the :func:`cut_square` of ``square``) with the crop map
    ``heat`` as a full-strength colour map where the crop placed by ``where``
    shows the frame; unchanged elsewhere. A viewer lays it over ``face`` at
    the opacity it chooses."""
    sx0, sy0, side = square
    x0, y0, x1, y1 = where.roi
    x0, y0 = max(x0, sx0, 0), max(y0, sy0, 0)
    x1, y1 = min(x1, sx0 + side), min(y1, sy0 + side)
    out = face.copy()
    if x1 <= x0 or y1 <= y0:
        return out
    clipped = Placement(where.sx, where.sy, where.bx, where.by, (x0, y0, x1, y1))
    out[y0 - sy0 : y1 - sy0, x0 - sx0 : x1 - sx0] = colorize(crop_map_to_roi(heat, clipped))
    return out


def resized(image: RGBImage, side: int) -> RGBImage:
    """A square ``image`` at ``side`` x ``side`` pixels."""
    if image.shape[0] == side and image.shape[1] == side:
        return image
    shrink = image.shape[0] > side
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    out: RGBImage = np.asarray(cv2.resize(image, (side, side), interpolation=interpolation))
    return out
