"""End to end on the FaceForensics++ pair in ../shared: a fake and the real
footage it was made from, as the reference."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ensemble.align import template_points
from ensemble.config import MediaLimits
from ensemble.faces import FaceDetector
from ensemble.media import load_media
from ensemble.pipeline import Analyzer
from explain import ExplainConfig, Explainer
from explain.reference import frames_at
from explain.ssim import matching_face, ssim_mask
from tests.tiny_registry import REGISTRY, explain_config

FAKE = "tranthuhoai3786_000_003.mp4"
REAL = "cyshih704_real.mp4"
FRAMES = 4


def _inner_and_border(diff: np.ndarray) -> tuple[float, float]:
    """Mean difference over the eyes-nose-mouth region of the aligned face,
    and over a 20-pixel border (hair, scarf, background)."""
    size = diff.shape[0]
    t = template_points(size)
    x0, x1 = int(t[:4, 0].min()), int(t[:4, 0].max())
    y0, y1 = int(t[:2, 1].min()), int(t[3, 1])
    border = np.ones_like(diff, dtype=bool)
    border[20:-20, 20:-20] = False
    return float(diff[y0:y1, x0:x1].mean()), float(diff[border].mean())


@pytest.mark.shared
def test_reference_masks_light_up_the_swapped_face_not_the_shared_footage(
    shared: Path, detector: FaceDetector
) -> None:
    videos = shared / "media" / "videos"
    fake = load_media(videos / FAKE, MediaLimits(), FRAMES)
    times = [round(f.time_s, 4) for f in fake.frames]
    reference = frames_at(videos / REAL, times, MediaLimits())
    for frame, t in zip(fake.frames, times, strict=True):
        [face] = detector.detect([frame.image])[0]
        ref = reference[t]
        match = matching_face(face.box, frame.image.shape, detector.detect([ref])[0], ref.shape)
        assert match is not None
        mask = ssim_mask(frame.image, face.keypoints, ref, match.keypoints, 224)
        inner, border = _inner_and_border(mask.difference)
        assert inner > 5 * border, (t, inner, border)


@pytest.mark.shared
def test_explainer_on_the_pair_writes_every_kind(
    shared: Path, tiny_weights: Path, blazeface_cache: Path, tmp_path: Path
) -> None:
    videos = shared / "media" / "videos"
    analyzer = Analyzer(explain_config(tiny_weights, blazeface_cache, frames=FRAMES), REGISTRY)
    out = tmp_path / "out"
    result, index = Explainer(analyzer, ExplainConfig(top_k=2)).run(
        videos / FAKE, out, reference=videos / REAL
    )
    assert result.status == "done" and index is not None
    assert len(result.persons) == 1 and len(result.faces) == FRAMES
    counts = Counter(a.kind for a in index.artifacts)
    assert counts == {
        "gradcam": 2 * 3,  # two members x (top 2 + the least suspicious)
        "attention": FRAMES,
        "ssim_temporal": FRAMES - 1,
        "ssim_reference": FRAMES,
        "chart": 2,
        "face": FRAMES,  # the face crop each overlay is drawn on
        "frame": FRAMES,  # the whole frame, for the viewer's inset
    }
    for art in index.artifacts:
        if art.media_type == "image/jpeg":
            with Image.open(out / art.path) as im:
                assert im.size == (art.width, art.height)
    # Grad-CAM is drawn on the face crop, the same framing and size as ``face``.
    gradcam = next(a for a in index.artifacts if a.kind == "gradcam")
    face = next(
        a
        for a in index.artifacts
        if a.kind == "face" and (a.frame, a.person) == (gradcam.frame, gradcam.person)
    )
    assert (gradcam.width, gradcam.height) == (face.width, face.height)
    assert face.width == face.height
