"""Training-time image augmentation (albumentations 2.x).

Crops seen at serving time come from compressed, rescaled video, so the
training pipeline degrades them the same ways: JPEG compression, downscaling,
blur, noise; plus flips, colour changes and cutout (CoarseDropout) so the
model does not rely on one face region. Each transform's probability is a
named constant; argument names are albumentations 2.0's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ensemble.media import RGBImage

P_JPEG = 0.5
JPEG_QUALITY = (40, 95)
P_DOWNSCALE = 0.25
DOWNSCALE = (0.5, 0.9)
P_FLIP = 0.5
P_COLOUR = 0.3
P_NOISE = 0.2
NOISE_STD = (0.01, 0.05)  # share of the value range
P_BLUR = 0.15
BLUR_SIGMA = (0.3, 1.5)
P_CUTOUT = 0.3
# Small shifts, zooms and turns: analysis crops come from a detector's box,
# which never frames a face exactly as the training crops were framed.
P_AFFINE = 0.3
AFFINE_SCALE = (0.92, 1.08)
AFFINE_SHIFT = (-0.04, 0.04)  # share of the crop side
AFFINE_ROTATE = (-6.0, 6.0)  # degrees
CUTOUT_HOLES = (1, 3)
CUTOUT_SIZE = (0.1, 0.25)  # share of the crop side


def build_augment() -> Any:
    """The albumentations ``Compose`` applied to every training crop."""
    import albumentations as alb  # type: ignore[import-untyped]

    return alb.Compose(
        [
            alb.Affine(
                scale=AFFINE_SCALE,
                translate_percent=AFFINE_SHIFT,
                rotate=AFFINE_ROTATE,
                border_mode=0,
                fill=0,
                p=P_AFFINE,
            ),
            alb.ImageCompression(quality_range=JPEG_QUALITY, p=P_JPEG),
            alb.Downscale(scale_range=DOWNSCALE, p=P_DOWNSCALE),
            alb.HorizontalFlip(p=P_FLIP),
            alb.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03, p=P_COLOUR),
            alb.GaussNoise(std_range=NOISE_STD, p=P_NOISE),
            alb.GaussianBlur(blur_limit=(3, 5), sigma_limit=BLUR_SIGMA, p=P_BLUR),
            alb.CoarseDropout(
                num_holes_range=CUTOUT_HOLES,
                hole_height_range=CUTOUT_SIZE,
                hole_width_range=CUTOUT_SIZE,
                fill=0,
                p=P_CUTOUT,
            ),
        ],
        seed=0,
    )


def augment(compose: Any, image: RGBImage, seed: int) -> RGBImage:
    """``compose`` applied to ``image`` with its random state set from ``seed``,
    so a sample's augmentation depends only on (run seed, epoch, index), not on
    which worker or in what order it was drawn (exact resume).

    Each transform gets a seed of its own, derived from ``seed``:
    albumentations' ``Compose.set_random_seed`` gives every transform the same
    seed, so their first draws (whether to apply) are the same number and the
    transforms fire together or not at all (with these probabilities, about
    half the crops came out untouched instead of about 3%)."""
    seeds = np.random.SeedSequence(seed).generate_state(len(compose.transforms) + 1)
    compose.set_random_seed(int(seeds[0]))
    for transform, own in zip(compose.transforms, seeds[1:], strict=True):
        transform.set_random_seed(int(own))
    out: RGBImage = np.ascontiguousarray(compose(image=image)["image"])
    return out
