"""Face alignment by keypoints and SSIM difference maps."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.data import astronaut

from ensemble.align import (
    AlignmentError,
    align_face,
    alignment_matrix,
    refine_alignment,
    similarity_transform,
    ssim_difference,
    template_points,
)

# Keypoints of a face in the astronaut picture (pixels), roughly where BlazeFace puts them.
FACE_KEYPOINTS = np.array(
    [[220.0, 110.0], [275.0, 110.0], [248.0, 140.0], [248.0, 168.0], [185.0, 125.0], [310.0, 125.0]]
)


def _similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([rot, [[tx], [ty]]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_similarity_transform_recovers_a_known_rotation_scale_and_shift():
    truth = _similarity(1.7, 12.0, 30.0, -8.0)
    src = FACE_KEYPOINTS
    estimated = similarity_transform(src, _apply(truth, src), [1, 1, 1, 1, 0.5, 0.5])
    np.testing.assert_allclose(estimated, truth, atol=1e-9)


def test_similarity_transform_never_reflects():
    src = FACE_KEYPOINTS
    mirrored = src * np.array([-1.0, 1.0])
    matrix = similarity_transform(src, mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_coincident_keypoints_are_refused_with_a_reason():
    with pytest.raises(AlignmentError, match="coincide"):
        similarity_transform(np.ones((6, 2)), np.zeros((6, 2)))


def test_a_shifted_and_scaled_crop_is_aligned_back_onto_the_original():
    image = astronaut()
    size = 128
    reference = align_face(image, FACE_KEYPOINTS, size)
    # The same face, 1.35x larger, slightly rotated and moved: a different crop of it.
    warp = _similarity(1.35, 4.0, -60.0, 25.0)
    moved = cv2.warpAffine(image, warp, (image.shape[1], image.shape[0]))
    realigned = align_face(moved, _apply(warp, FACE_KEYPOINTS), size)
    centre = slice(16, size - 16)
    diff = np.abs(reference[centre, centre].astype(float) - realigned[centre, centre])
    assert diff.mean() < 8.0  # interpolation noise only
    # Without alignment the two crops would not match at all.
    naive = cv2.resize(moved[60:240, 150:330], (size, size))
    naive_ref = cv2.resize(image[60:240, 150:330], (size, size))
    assert np.abs(naive.astype(float) - naive_ref).mean() > 3 * diff.mean()


def test_aligned_keypoints_land_on_the_template():
    size = 96
    warp = _similarity(0.8, -7.0, 40.0, 10.0)
    points = _apply(warp, FACE_KEYPOINTS)
    landed = _apply(alignment_matrix(points, size), points)
    # A similarity cannot fit arbitrary keypoints exactly; these are a real face's, so near.
    assert np.abs(landed - template_points(size)).max() < 0.12 * size


def test_ssim_difference_is_strongest_in_the_one_altered_region():
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), (128, 128))
    altered = base.copy()
    altered[80:112, 20:52] = 255 - altered[80:112, 20:52]
    diff = ssim_difference(base, altered)
    assert diff.shape == (128, 128)
    assert diff.min() >= 0.0 and diff.max() <= 1.0
    y, x = np.unravel_index(np.argmax(diff), diff.shape)
    assert 80 - 3 <= y < 112 + 3 and 20 - 3 <= x < 52 + 3
    inside = diff[80:112, 20:52].mean()
    outside = np.delete(diff, np.s_[74:118], axis=0).mean()
    assert inside > 5 * outside


def test_ssim_difference_of_identical_images_is_zero():
    img = astronaut()[:64, :64]
    assert ssim_difference(img, img).max() == pytest.approx(0.0, abs=1e-9)


def test_ssim_difference_uses_data_range_one_for_float_images():
    rng = np.random.default_rng(1)
    a = rng.random((32, 32))
    b = np.clip(a + 0.05 * rng.standard_normal((32, 32)), 0, 1)
    as_uint8 = ssim_difference((a * 255).astype(np.uint8), (b * 255).astype(np.uint8))
    assert np.abs(ssim_difference(a, b) - as_uint8).mean() < 0.02


def test_ssim_difference_refuses_images_of_different_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        ssim_difference(np.zeros((16, 16)), np.zeros((16, 17)))


def test_refinement_removes_a_small_residual_shift_and_rotation():
    fixed = cv2.resize(astronaut()[20:220, 150:350], (128, 128))
    residual = cv2.getRotationMatrix2D((64, 64), 3.0, 1.03)
    residual[:, 2] += (4.0, -3.0)
    moving = cv2.warpAffine(fixed, residual, (128, 128), borderMode=cv2.BORDER_REFLECT)
    centre = np.s_[16:112, 16:112]
    before = np.abs(fixed[centre].astype(float) - moving[centre]).mean()
    after = np.abs(fixed[centre].astype(float) - refine_alignment(fixed, moving)[centre]).mean()
    assert after < 0.4 * before
