"""bench.detect_probe counts and times both ways on the same frames."""

from __future__ import annotations

from pathlib import Path

from bench import detect_probe
from ensemble import faces as face_module
from ensemble.config import MediaLimits
from ensemble.faces import FaceDetector, plan_views
from ensemble.media import load_media
from tests import media_factory as mf


def test_probe_runs_fewer_views_for_a_large_face_and_finds_the_same_faces(
    detector: FaceDetector,
) -> None:
    frame = mf.noise_frame(1920, 1080) // 3
    frame[200:800, 600:1200] = mf.face_image(600)
    row = detect_probe.measure(detector, [frame.copy() for _ in range(5)], repeats=1)
    n_views = len(plan_views(1080, 1920))
    n_fine = sum(v.is_tile and v.side == 540 for v in plan_views(1080, 1920))
    assert row["whole_pyramid"]["views"] == 5 * n_views
    assert row["probe"]["views"] == 5 * (n_views - n_fine) + 2 * n_fine  # frames 0 and 4
    assert row["frames_with_other_faces"] == 0 and row["faces_per_frame"] == 1
    assert face_module.FINE_PROBE_EVERY == 4  # put back afterwards
    assert detector._run.__name__ == "_run"


def test_upscaled_copy_is_1080p(tmp_path: Path) -> None:
    src = mf.write_clip(tmp_path / "small.mp4", frames=6)
    out = detect_probe.upscaled_copy(src, tmp_path)
    frames = load_media(out, MediaLimits(), 3).frames
    assert frames[0].image.shape == (1080, 1920, 3)
