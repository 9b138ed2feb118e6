"""Maps drawn back onto frames where the crops came from; attention maps."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from ensemble.crops import CropPolicy, crop_face
from ensemble.members import LoadedMember
from explain.attention import attention_maps, has_attention
from explain.config import ExplainConfig
from explain.geometry import crop_map_to_roi, placement
from explain.render import (
    cut_square,
    encode,
    face_square,
    fit,
    heat_on_square,
    overlay_on_frame,
)
from tests.tiny_registry import tiny_attention_spec

POLICIES = [
    CropPolicy("square", 0.3),
    CropPolicy("square", 0.2),
    CropPolicy("isotropic", 1 / 3),
]
# Boxes: well inside, touching the left/top edge (padding in the crop), and tall.
BOXES = [(120.0, 80.0, 200.0, 170.0), (3.0, 5.0, 90.0, 100.0), (250.0, 40.0, 300.0, 200.0)]


def _smooth_frame(h: int = 240, w: int = 320) -> np.ndarray:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: f"{p.kind}-{p.margin:.2f}")
@pytest.mark.parametrize("box", BOXES, ids=["inside", "edge", "tall"])
def test_placement_maps_crop_pixels_to_the_frame_pixels_they_show(policy, box) -> None:
    frame = _smooth_frame()
    size = 96
    crop = crop_face(frame, box, policy, size).astype(np.float32)
    where = placement(frame.shape, box, policy, size)
    # Rebuild the crop by sampling the frame where the placement says each crop pixel lies.
    u, v = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
    fx = (where.sx * u + where.bx).astype(np.float32)
    fy = (where.sy * v + where.by).astype(np.float32)
    rebuilt = cv2.remap(frame, fx, fy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    x0, y0, x1, y1 = where.roi
    inside = (fx >= x0 + 1) & (fx <= x1 - 2) & (fy >= y0 + 1) & (fy <= y1 - 2)
    assert inside.mean() > 0.3
    err = np.abs(rebuilt.astype(np.float32) - crop)[inside].mean()
    assert err < 4.0
    # Outside the frame region the crop is padding (black).
    assert (
        crop[~inside & ((fx < x0 - 1) | (fx > x1) | (fy < y0 - 1) | (fy > y1))].max(initial=0) == 0
    )
    # A placement off by a few pixels would not rebuild the crop.
    shifted = cv2.remap(frame, fx + 3, fy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    assert np.abs(shifted.astype(np.float32) - crop)[inside].mean() > 2 * err


def test_a_crop_map_peak_lands_on_the_same_spot_of_the_frame() -> None:
    frame = _smooth_frame()
    box, policy, size = BOXES[0], CropPolicy("isotropic", 1 / 3), 64
    where = placement(frame.shape, box, policy, size)
    heat = np.zeros((size, size), np.float32)
    heat[40:44, 20:24] = 1.0
    roi_heat = crop_map_to_roi(heat, where)
    py, px = np.unravel_index(np.argmax(roi_heat), roi_heat.shape)
    expected = where.to_frame(21.5, 41.5)
    assert abs(where.roi[0] + px - expected[0]) <= where.sx + 1
    assert abs(where.roi[1] + py - expected[1]) <= where.sy + 1


def test_overlay_changes_only_the_face_region_and_scales_with_the_frame() -> None:
    frame = _smooth_frame()
    box, policy, size = BOXES[0], CropPolicy("square", 0.3), 64
    where = placement(frame.shape, box, policy, size)
    heat = np.ones((size, size), np.float32)
    small, factor = fit(frame, 160)
    out = overlay_on_frame(small, heat, where.scaled(factor), alpha=0.5)
    assert out.shape == small.shape
    changed = np.any(out != small, axis=2)
    ys, xs = np.nonzero(changed)
    x0, y0, x1, y1 = where.scaled(factor).roi
    assert xs.min() >= x0 - 1 and xs.max() <= x1 and ys.min() >= y0 - 1 and ys.max() <= y1
    assert changed[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].all()


def test_face_square_centres_the_box_and_pads_outside_the_frame() -> None:
    frame = _smooth_frame()
    x0, y0, side = face_square((10.0, 20.0, 50.0, 40.0), margin=0.5)
    assert side == 80 and (x0 + side / 2, y0 + side / 2) == (30.0, 30.0)
    crop = cut_square(frame, (x0, y0, side))
    assert crop.shape == (80, 80, 3)
    assert (crop[:, :-x0] == 0).all() and (
        crop[-y0:, -x0:] == frame[: side + y0, : side + x0]
    ).all()


def test_heat_on_the_face_crop_changes_only_the_region_the_member_saw() -> None:
    frame = _smooth_frame()
    box, policy, size = BOXES[0], CropPolicy("square", 0.1), 64
    where = placement(frame.shape, box, policy, size)
    square = face_square(box, margin=0.5)
    face = cut_square(frame, square)
    layer = heat_on_square(face, square, np.ones((size, size), np.float32), where)
    changed = np.any(layer != face, axis=2)
    ys, xs = np.nonzero(changed)
    rx0, ry0, rx1, ry1 = where.roi
    sx0, sy0, _ = square
    assert xs.min() >= rx0 - sx0 and xs.max() < rx1 - sx0
    assert ys.min() >= ry0 - sy0 and ys.max() < ry1 - sy0
    assert changed[ry0 - sy0 + 1 : ry1 - sy0 - 1, rx0 - sx0 + 1 : rx1 - sx0 - 1].all()
    assert not changed[:2].any() and not changed[:, :2].any()  # the margin is left as it was


def test_encoded_images_respect_max_side_and_format() -> None:
    frame = _smooth_frame(480, 640)
    data, w, h = encode(frame, ExplainConfig(max_side=200, image_format="webp", quality=60))
    assert (w, h) == (200, 150) and data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    data, w, h = encode(frame, ExplainConfig(max_side=1000))
    assert (w, h) == (640, 480) and data[:2] == b"\xff\xd8"


def test_attention_maps_are_the_models_own_map_upsampled() -> None:
    spec = tiny_attention_spec("att", 56)
    torch.manual_seed(0)
    member = LoadedMember(
        spec=spec, model=spec.build(), input_size=56, mean=spec.mean, std=spec.std
    )
    assert has_attention(member)
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (56, 56, 3), dtype=np.uint8) for _ in range(3)]
    maps = attention_maps(member, crops, batch_size=2)
    with torch.inference_mode():
        _, raw = member.model.forward_with_attention(member.to_tensor(crops))
    assert len(maps) == 3
    for m, r in zip(maps, raw[:, 0].numpy(), strict=True):
        assert m.shape == (56, 56) and m.min() >= 0.0 and m.max() <= 1.0
        # Upsampling keeps the map's mean and where it is high.
        assert m.mean() == pytest.approx(r.mean(), abs=0.02)
        down = cv2.resize(m, r.shape[::-1], interpolation=cv2.INTER_AREA)
        assert np.corrcoef(down.ravel(), r.ravel())[0, 1] > 0.9


def test_members_without_attention_are_not_asked_for_one(tiny_member) -> None:
    assert not has_attention(tiny_member("plain"))
