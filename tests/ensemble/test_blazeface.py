from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.data import astronaut

from ensemble.blazeface import (
    NUM_ANCHORS,
    BlazeFaceNet,
    Detection,
    box_iou,
    default_tflite_path,
    load_blazeface_net,
    ssd_anchors,
    weighted_nms,
)
from ensemble.config import FaceConfig
from ensemble.faces import FaceDetector, plan_views
from ensemble.media import MediaLimits, load_media
from tests import media_factory as mf

# Where the astronaut's face is in skimage.data.astronaut() (512x512), by eye.
ASTRONAUT_FACE = (175.0, 75.0, 275.0, 180.0)
CONFIDENT = 0.9


def test_anchors_follow_mediapipe_front_model_layout() -> None:
    anchors = ssd_anchors()
    assert anchors.shape == (NUM_ANCHORS, 4)
    # 16x16 cells with 2 anchors, then 8x8 cells with 6 anchors; fixed size.
    assert np.allclose(anchors[0], [0.5 / 16, 0.5 / 16, 1, 1])
    assert np.allclose(anchors[1], anchors[0])
    assert np.allclose(anchors[2], [1.5 / 16, 0.5 / 16, 1, 1])
    assert np.allclose(anchors[512], [0.5 / 8, 0.5 / 8, 1, 1])
    assert np.allclose(anchors[512:518], anchors[512])
    assert np.allclose(anchors[-1], [7.5 / 8, 7.5 / 8, 1, 1])


def test_converted_net_finds_the_astronauts_face(detector: FaceDetector) -> None:
    faces = detector.detect([astronaut()])[0]
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.9
    iou = box_iou(np.array(face.box), np.array([ASTRONAUT_FACE]))[0]
    assert iou > 0.6, face.box
    (rex, rey), (lex, ley), (nx, ny), (_mx, my) = face.keypoints[:4]
    assert max(rey, ley) < ny < my  # eyes above nose above mouth
    assert rex < nx < lex  # right eye (the person's) on the image's left


def test_conversion_is_cached_by_source_sha256(tmp_path: Path) -> None:
    source = default_tflite_path()
    load_blazeface_net(source, tmp_path)
    cached = list(tmp_path.glob("blazeface_front_*.safetensors"))
    assert len(cached) == 1
    # A different source file never reuses that cache.
    copy = tmp_path / "other.tflite"
    data = bytearray(source.read_bytes())
    copy.write_bytes(bytes(data) + b"\0")
    load_blazeface_net(copy, tmp_path)
    assert len(list(tmp_path.glob("blazeface_front_*.safetensors"))) == 2


def test_cached_and_fresh_conversions_agree(tmp_path: Path) -> None:
    fresh = load_blazeface_net(cache_dir=tmp_path)
    cached = load_blazeface_net(cache_dir=tmp_path)
    for (k, a), b in zip(fresh.state_dict().items(), cached.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_weighted_nms_merges_overlaps_by_score() -> None:
    rows = np.zeros((3, 16))
    rows[0, :4] = [0, 0, 10, 10]
    rows[1, :4] = [1, 1, 11, 11]
    rows[2, :4] = [50, 50, 60, 60]
    merged = weighted_nms(rows, np.array([0.9, 0.6, 0.8]), 0.3)
    assert len(merged) == 2
    (first, s1), (second, s2) = merged
    assert s1 == pytest.approx(0.9) and s2 == pytest.approx(0.8)
    assert first[0] == pytest.approx(0.6 / 1.5)  # score-weighted mean of 0 and 1
    assert list(second[:4]) == [50, 50, 60, 60]


def test_tiles_cover_a_1080p_frame_at_two_scales() -> None:
    views = plan_views(1080, 1920)
    tiles = [v for v in views if v.is_tile]
    assert {v.side for v in tiles} == {1080, 540}
    cover = np.zeros((1080, 1920), bool)
    for v in tiles:
        if v.side == 540:
            cover[v.y0 : v.y0 + 540, v.x0 : v.x0 + 540] = True
    assert cover.all()


def test_small_face_in_a_1080p_frame_is_found_through_tiles(detector: FaceDetector) -> None:
    frame = mf.noise_frame(1920, 1080) // 3
    frame[600:840, 1400:1640] = mf.face_image(240)  # the face itself is about 80 px
    faces = detector.detect([frame])[0]
    assert faces, "no face found"
    best = faces[0]
    assert 1420 < best.box[0] < 1490 and 630 < best.box[1] < 700, best.box
    assert 60 < best.width < 110


def test_frame_without_faces_yields_no_detection(detector: FaceDetector) -> None:
    assert detector.detect([mf.noise_frame(640, 480)]) == [[]]


@pytest.mark.shared
def test_matches_independent_pytorch_conversion_on_real_frames(
    shared: Path, detector: FaceDetector
) -> None:
    """hollance/BlazeFace-PyTorch converted the same front model on its own.
    Its tensors run in our architecture (loaded by graph order), and both find
    the same faces on real video frames. That conversion comes from an earlier
    release of the .tflite file, so the weights are not bitwise equal: we ask
    for the same faces with boxes overlapping by IoU >= 0.75 and keypoints
    within 15% of the face width, for every face either finds with a score of
    at least 0.9."""
    reference = torch.load(shared / "weights/blazeface/blazeface.pth", weights_only=True)
    ours = detector.net.state_dict()
    assert [tuple(v.shape) for v in reference.values()] == [tuple(v.shape) for v in ours.values()]
    other_net = BlazeFaceNet()
    other_net.load_state_dict(dict(zip(other_net.state_dict(), reference.values(), strict=True)))
    other = FaceDetector(other_net, FaceConfig(), "cpu")
    assert np.array_equal(np.load(shared / "weights/blazeface/anchors.npy"), ssd_anchors())

    frames = [astronaut()]
    for name in ("cyshih704_real.mp4", "tranthuhoai3786_009.mp4", "tranthuhoai3786_000_003.mp4"):
        frames += [
            f.image for f in load_media(shared / "media/videos" / name, MediaLimits(), 4).frames
        ]
    compared = 0
    for a_faces, b_faces in zip(detector.detect(frames), other.detect(frames), strict=True):
        # Every confident face of either is found by the other, at the same place.
        for mine, theirs in ((a_faces, b_faces), (b_faces, a_faces)):
            for a in (f for f in mine if f.score >= CONFIDENT):
                ious = [box_iou(np.array(a.box), np.array([b.box]))[0] for b in theirs]
                assert ious and max(ious) >= 0.75, (a, theirs)
                b = theirs[int(np.argmax(ious))]
                kp_error = np.abs(np.array(a.keypoints) - np.array(b.keypoints)).max()
                assert kp_error <= 0.15 * a.width
                compared += 1
    assert compared >= len(frames)


def test_a_detector_that_returns_nan_fails_instead_of_finding_no_face(
    blazeface_cache: Path,
) -> None:
    """NaN scores fail every threshold, so a broken detector (a damaged
    converted-weights cache, a faulty runtime) reported every upload as "no
    face": a crash read as a result."""
    from ensemble.errors import NonFiniteScoreError

    broken = FaceDetector.load(FaceConfig(), blazeface_cache)
    with torch.no_grad():
        for parameter in broken.net.parameters():
            parameter.fill_(float("nan"))
    frame = np.ascontiguousarray(astronaut())
    with pytest.raises(NonFiniteScoreError, match="face detector"):
        broken.detect([frame])


def test_detection_is_frozen_dataclass() -> None:
    d = Detection((0, 0, 10, 20), 0.9, ((0, 0),) * 6)
    assert (d.width, d.height) == (10, 20)
    with pytest.raises(AttributeError):
        d.score = 0.1  # type: ignore[misc]


def test_frozen_cpu_graph_matches_the_eager_network(detector: FaceDetector) -> None:
    torch.manual_seed(0)
    x = (torch.rand(5, 3, 128, 128) * 2 - 1).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        eager = detector.net(x)
        frozen = detector._run_net(x)  # a batch size other than the traced one
    assert detector._run_net is not detector.net
    for a, b in zip(eager, frozen, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-4)


def _counting(detector: FaceDetector, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records how many views each network pass of ``detector`` gets."""
    seen: list[int] = []
    run = detector._run

    def counted(batch: np.ndarray) -> list:
        seen.append(len(batch))
        return run(batch)

    monkeypatch.setattr(detector, "_run", counted)
    return seen


def _boxes(faces: list[Detection]) -> list[tuple[float, ...]]:
    return [tuple(round(v, 3) for v in f.box) for f in faces]


def test_finest_tiles_run_on_probe_frames_only_when_they_find_nothing_new(
    detector: FaceDetector, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A face large enough for the coarse views, in 8 frames of 1080p.
    frame = mf.noise_frame(1920, 1080) // 3
    frame[200:800, 600:1200] = mf.face_image(600)
    frames = [frame.copy() for _ in range(8)]
    views = plan_views(1080, 1920)
    n_fine = sum(v.is_tile and v.side == 540 for v in views)
    seen = _counting(detector, monkeypatch)
    faces = detector.detect(frames)
    assert all(len(f) == 1 for f in faces)
    # Coarse views of all 8 frames, then the finest tiles of frames 0 and 4.
    assert sum(seen) == 8 * (len(views) - n_fine) + 2 * n_fine


def test_small_face_seen_by_a_probe_is_found_in_every_frame_it_is_in(
    detector: FaceDetector, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A face only the finest tiles see, in frames 2-9 of 12 (probes: 0, 4, 8).
    empty = mf.noise_frame(1920, 1080) // 3
    with_face = empty.copy()
    with_face[600:840, 1400:1640] = mf.face_image(240)
    frames = [with_face.copy() if 2 <= i <= 9 else empty.copy() for i in range(12)]
    seen = _counting(detector, monkeypatch)
    faces = detector.detect(frames)
    assert [bool(f) for f in faces] == [2 <= i <= 9 for i in range(12)]
    # Only the finest tiles around the face run beyond the probes.
    views = plan_views(1080, 1920)
    n_fine = sum(v.is_tile and v.side == 540 for v in views)
    assert 12 * (len(views) - n_fine) + 3 * n_fine < sum(seen) < 12 * len(views)
    # The same faces as with every frame probed.
    monkeypatch.setattr("ensemble.faces.FINE_PROBE_EVERY", 1)
    every = detector.detect(frames)
    assert [_boxes(f) for f in faces] == [_boxes(f) for f in every]


def test_small_face_moving_between_probes_is_found_where_it_went(
    detector: FaceDetector, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Moving 18 px a frame (72 px between probes), across a tile boundary.
    face = mf.face_image(240)
    frames = []
    for i in range(9):
        frame = mf.noise_frame(1920, 1080) // 3
        x = 300 + 18 * i
        frame[500:740, x : x + 240] = face
        frames.append(frame)
    faces = detector.detect(frames)
    assert all(len(f) == 1 for f in faces)
    # Where the face is, within the detector's few pixels of jitter.
    offsets = [f[0].box[0] - 18 * i for i, f in enumerate(faces)]
    assert max(offsets) - min(offsets) < 12, offsets
    monkeypatch.setattr("ensemble.faces.FINE_PROBE_EVERY", 1)
    assert [_boxes(f) for f in faces] == [_boxes(f) for f in detector.detect(frames)]


def test_small_frames_have_no_finest_level_to_probe(
    detector: FaceDetector, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _counting(detector, monkeypatch)
    detector.detect([mf.noise_frame(1280, 720)] * 3)
    assert sum(seen) == 3 * len(plan_views(720, 1280))
