from __future__ import annotations

import cv2
import numpy as np
import pytest

from ensemble.training.augment import augment, build_augment
from ensemble.training.masks import face_mask, face_outline, part_mask
from ensemble.training.sbi import changed_fraction_inside, self_blend
from ensemble.training.ssim_blackout import manipulated_region, ssim_blackout
from tests.training_toys import face_crop, face_keypoints

SIZE = 128


def _grown(mask: np.ndarray, pixels: int) -> np.ndarray:
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


def test_self_blend_mask_lands_on_the_face_and_only_there() -> None:
    image, kp = face_crop(SIZE), face_keypoints(SIZE)
    face = face_mask(kp, (SIZE, SIZE))
    around_face = _grown(face, SIZE // 8)
    for seed in range(8):
        sb = self_blend(image, kp, np.random.default_rng(seed))
        assert sb.image.shape == image.shape and sb.image.dtype == np.uint8
        assert sb.mask.max() == pytest.approx(sb.ratio, abs=1e-3)
        # Nearly all blending weight sits on the (slightly grown) face.
        assert sb.mask[around_face].sum() / sb.mask.sum() > 0.97
        # The face centre (the nose) takes the full blend ratio.
        nx, ny = (round(v) for v in kp[2])
        assert sb.mask[ny, nx] > 0.5 * sb.ratio
        # Corners of the crop are background: no blending there.
        assert sb.mask[:8, :8].max() < 1e-3


def test_self_blend_with_a_perturbed_source_changes_only_the_blended_region() -> None:
    image, kp = face_crop(SIZE), face_keypoints(SIZE)
    # The first draw picks the perturbed copy: below 0.5, the source.
    seeds = [s for s in range(40) if np.random.default_rng(s).random() < 0.5][:5]
    for seed in seeds:
        sb = self_blend(image, kp, np.random.default_rng(seed))
        changed = np.abs(sb.image.astype(int) - image.astype(int)).max(axis=2) > 0
        assert changed.sum() > 0.05 * face_mask(kp, (SIZE, SIZE)).sum()
        assert changed_fraction_inside(image, sb.image, sb.mask) == 1.0


def test_self_blend_without_keypoints_uses_a_centred_ellipse() -> None:
    sb = self_blend(face_crop(SIZE), None, np.random.default_rng(1))
    ys, xs = np.nonzero(sb.mask > 0.05)
    assert abs(xs.mean() - SIZE / 2) < SIZE * 0.1 and abs(ys.mean() - SIZE / 2) < SIZE * 0.1
    assert sb.mask[:10].max() < 1e-3


def test_face_outline_adds_forehead_and_chin() -> None:
    kp = face_keypoints(SIZE)
    outline = face_outline(kp)
    assert outline.shape == (8, 2)
    assert outline[6, 1] < min(kp[0][1], kp[1][1]) and outline[7, 1] > kp[3][1]


def _synthetic_pair(shift: tuple[int, int] = (0, 0)):
    """An original and a fake that differs only inside RECT (the 'swapped' region)."""
    original = face_crop(SIZE)
    fake = original.copy()
    rng = np.random.default_rng(0)
    y0, y1, x0, x1 = 50, 90, 40, 90
    fake[y0:y1, x0:x1] = rng.integers(0, 255, size=(y1 - y0, x1 - x0, 3), dtype=np.uint8)
    rect = np.zeros((SIZE, SIZE), bool)
    rect[y0:y1, x0:x1] = True
    kp = face_keypoints(SIZE)
    dx, dy = shift
    moved = np.roll(original, (dy, dx), axis=(0, 1))
    kp_moved = tuple((x + dx, y + dy) for x, y in kp)
    return moved, kp_moved, fake, kp, rect


def test_ssim_region_marks_the_altered_part_of_a_synthetic_pair() -> None:
    original, _kp_o, fake, _kp_f, rect = _synthetic_pair()
    region = manipulated_region(fake, original) > 0
    near = _grown(rect, 6)
    assert (region & near).sum() / region.sum() > 0.95
    assert (region & rect).sum() / rect.sum() > 0.8


def test_ssim_region_aligns_an_original_that_moved() -> None:
    original, kp_o, fake, kp_f, rect = _synthetic_pair(shift=(7, -5))
    # The moved original has no content for a border strip (np.roll wrapped it).
    inner = np.zeros((SIZE, SIZE), bool)
    inner[12:-12, 12:-12] = True
    unaligned = (manipulated_region(fake, original) > 0) & inner
    aligned = (manipulated_region(fake, original, kp_f, kp_o) > 0) & inner
    near = _grown(rect, 6)
    assert (aligned & near).sum() / aligned.sum() > 0.9
    assert (unaligned & ~near).sum() > 5 * max((aligned & ~near).sum(), 1)


def test_ssim_region_ignores_keypoint_noise_on_a_pair_that_already_coincides() -> None:
    original, kp_o, fake, kp_f, rect = _synthetic_pair()
    jitter = np.random.default_rng(5).uniform(-4, 4, size=(6, 2))
    noisy_kp_o = tuple((x + dx, y + dy) for (x, y), (dx, dy) in zip(kp_o, jitter, strict=True))
    as_is = manipulated_region(fake, original) > 0
    with_noise = manipulated_region(fake, original, kp_f, noisy_kp_o) > 0
    assert np.array_equal(with_noise, as_is)
    assert (with_noise & _grown(rect, 6)).sum() / with_noise.sum() > 0.95


def test_blackout_hides_part_of_the_altered_region() -> None:
    original, _kp_o, fake, _kp_f, rect = _synthetic_pair()
    near = _grown(rect, 6)
    for seed in range(5):
        b = ssim_blackout(fake, np.random.default_rng(seed), original=original)
        assert b.source == "ssim"
        hidden = b.mask > 0
        assert hidden.any() and (hidden & near).sum() / hidden.sum() > 0.95
        assert hidden.sum() < (manipulated_region(fake, original) > 0).sum()
        assert (b.image[hidden] == 0).all()
        assert (b.image[~hidden] == fake[~hidden]).all()


def test_blackout_without_original_hides_a_face_part() -> None:
    fake, kp = face_crop(SIZE), face_keypoints(SIZE)
    seen = set()
    for seed in range(12):
        b = ssim_blackout(fake, np.random.default_rng(seed), kp_fake=kp)
        assert b.source in ("eyes", "nose", "mouth", "hull")
        assert np.array_equal(b.mask, part_mask(b.source, kp, (SIZE, SIZE)))
        assert (b.image[b.mask > 0] == 0).all()
        seen.add(b.source)
    assert len(seen) >= 3
    untouched = ssim_blackout(fake, np.random.default_rng(0))
    assert untouched.source == "none" and np.array_equal(untouched.image, fake)


def test_augmentation_is_a_function_of_its_seed() -> None:
    compose = build_augment()
    image = face_crop(64)
    a, b = augment(compose, image, 7), augment(compose, image, 7)
    assert np.array_equal(a, b) and a.shape == image.shape
    assert any(not np.array_equal(a, augment(compose, image, s)) for s in range(8, 14))


def test_transforms_fire_independently_of_each_other() -> None:
    # Every transform draws from a seed of its own: with one shared seed the
    # transforms fired together or not at all, and about half the crops came
    # out untouched.
    compose = build_augment()
    image = face_crop(48)
    fired = []
    for seed in range(300):
        applied = []
        seeds = np.random.SeedSequence(seed).generate_state(len(compose.transforms) + 1)
        for transform, own in zip(compose.transforms, seeds[1:], strict=True):
            transform.set_random_seed(int(own))
            applied.append(transform.py_random.random() < transform.p)
        fired.append(applied)
        assert np.array_equal(augment(compose, image, seed), augment(compose, image, seed))
    rates = np.asarray(fired, dtype=np.float64)
    expected = np.asarray([t.p for t in compose.transforms])
    assert np.allclose(rates.mean(axis=0), expected, atol=0.1)
    untouched = sum(np.array_equal(augment(compose, image, s), image) for s in range(300))
    assert untouched / 300 < 0.1
    # Flip and JPEG (both p = 0.5) are not tied to each other.
    assert 0.1 < np.mean(rates[:, 1] != rates[:, 3]) < 0.9
