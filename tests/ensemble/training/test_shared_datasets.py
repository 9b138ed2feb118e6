from __future__ import annotations

from pathlib import Path

import numpy as np

from ensemble.training.data import limit_balanced, load_samples, read_rgb, select
from ensemble.training.masks import face_mask
from ensemble.training.sbi import self_blend


def test_dfdc_faces_metadata_reads_splits_and_originals(shared: Path, detector) -> None:
    samples = load_samples(shared / "datasets" / "dfdc_faces")
    val = select(samples, "val")
    assert select(samples, "train") and val
    fakes = [s for s in val if s.label == 1]
    with_original = [s for s in fakes if s.original is not None]
    assert len(with_original) > 0.9 * len(fakes)
    assert all(s.original.parent.name == "real" for s in with_original[:50])
    # A handful of real crops: SBI blends on the face, from BlazeFace keypoints
    # where it finds the (tight, crop-filling) face, else from the ellipse.
    reals = [s for s in limit_balanced(val, 8, seed=0) if s.label == 0]
    images = [read_rgb(s.path) for s in reals]
    for image, dets in zip(images, detector.detect(images), strict=True):
        kp = dets[0].keypoints if dets else None
        sb = self_blend(image, kp, np.random.default_rng(0))
        face = face_mask(kp, image.shape[:2]) > 0
        assert sb.mask[face].sum() > 0.5 * sb.mask.sum()
