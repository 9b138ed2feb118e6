from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble.config import AnalysisConfig
from ensemble.errors import NonFiniteScoreError, RegistryError
from ensemble.faces import FaceDetector
from ensemble.pipeline import analyze
from tests import media_factory as mf


def config(*members: str, frames: int = 8) -> AnalysisConfig:
    return AnalysisConfig(members=members, frames=frames)


def _clip(path: Path, pictures: list[np.ndarray]) -> Path:
    """An H.264 clip of ``pictures`` (RGB, all one size) at 10 fps."""
    import av

    container = av.open(str(path), mode="w")
    stream = container.add_stream("libx264", rate=10)
    stream.height, stream.width = pictures[0].shape[:2]
    stream.pix_fmt = "yuv420p"
    for img in pictures:
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def test_image_with_a_face_gets_a_calibrated_score(
    tmp_path: Path, detector: FaceDetector, tiny_member
) -> None:
    path = mf.write_image(tmp_path / "face.png", mf.face_image(256), "PNG")
    members = {"a": tiny_member("a"), "b": tiny_member("b", input_size=48)}
    result = analyze(path, config("a", "b"), members=members, detector=detector)
    assert result.status == "done"
    assert result.verdict in ("fake", "uncertain", "real")
    assert set(result.members) == {"a", "b"}
    assert len(result.faces) == 1 and len(result.persons) == 1
    face = result.faces[0]
    assert face.score == pytest.approx(np.mean(list(face.members.values())))
    assert result.score == pytest.approx(face.score)
    assert {"decode", "detect", "track", "crop", "member:a", "member:b", "score", "total"} <= set(
        result.timings
    )


def test_known_member_scores_give_the_expected_verdicts(
    tmp_path: Path, detector: FaceDetector, tiny_member
) -> None:
    path = mf.write_image(tmp_path / "face.png", mf.face_image(256), "PNG")
    logit_fake, logit_real = 3.0, -3.0
    fake = analyze(
        path, config("f"), members={"f": tiny_member("f", logit=logit_fake)}, detector=detector
    )
    real = analyze(
        path, config("r"), members={"r": tiny_member("r", logit=logit_real)}, detector=detector
    )
    assert fake.verdict == "fake" and fake.score == pytest.approx(1 / (1 + np.exp(-3)))
    assert real.verdict == "real"
    # Temperature calibration is applied: T=6 brings a logit of 3 to sigmoid(0.5).
    soft = analyze(
        path,
        config("f"),
        members={"f": tiny_member("f", logit=3.0, temperature=6.0)},
        detector=detector,
    )
    assert soft.score == pytest.approx(1 / (1 + np.exp(-0.5)))
    # So is the member's bias, after the temperature: sigmoid(3 / 6 - 1).
    shifted = analyze(
        path,
        config("f"),
        members={"f": tiny_member("f", logit=3.0, temperature=6.0, bias=-1.0)},
        detector=detector,
    )
    assert shifted.score == pytest.approx(1 / (1 + np.exp(0.5)))
    assert shifted.members["f"] == pytest.approx(shifted.score)
    assert [(m.temperature, m.bias) for m in shifted.models] == [(6.0, -1.0)]
    # Members are averaged: one fake member and one real member meet in the middle.
    both = analyze(
        path,
        config("f", "r"),
        members={"f": tiny_member("f", logit=3.0), "r": tiny_member("r", logit=-3.0)},
        detector=detector,
    )
    assert both.score == pytest.approx(0.5) and both.verdict == "uncertain"


def test_one_manipulated_person_flags_the_video(
    tmp_path: Path, detector: FaceDetector, tiny_member
) -> None:
    import torch

    class RightHalfIsFake(torch.nn.Module):
        # Crops of the right-hand person are darker (see below): score by brightness.
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x.mean(dim=(1, 2, 3)) < -0.2).float()[:, None] * 8 - 4

    face = mf.face_image(240)
    pictures = []
    for i in range(10):
        img = np.full((320, 640, 3), 90, np.uint8)
        img[40:280, 20 + i : 260 + i] = face
        img[40:280, 380 - i : 620 - i] = face // 3  # darker twin on the right
        pictures.append(img)
    path = _clip(tmp_path / "two.mp4", pictures)

    member = tiny_member("planted")
    member.model = RightHalfIsFake()
    result = analyze(
        path, config("planted", frames=6), members={"planted": member}, detector=detector
    )
    assert result.status == "done"
    assert len(result.persons) == 2
    left, right = sorted(
        result.persons,
        key=lambda p: result.faces[[f.person for f in result.faces].index(p.id)].box[0],
    )
    assert left.verdict == "real" and right.verdict == "fake"
    assert result.verdict == "fake" and result.score == pytest.approx(right.score)
    rows = result.to_dict()["frames"]
    assert {r["person"] for r in rows} == {0, 1}
    assert len(rows) == len(result.faces)


def test_faceless_clip_is_no_face_not_real(
    tmp_path: Path, detector: FaceDetector, tiny_member
) -> None:
    path = mf.write_clip(tmp_path / "empty_room.mp4", frames=20)
    result = analyze(path, config("a"), members={"a": tiny_member("a")}, detector=detector)
    assert result.status == "done" and result.verdict == "no_face"
    assert result.score is None and "No face" in (result.reason or "")


def test_corrupt_media_is_rejected_with_reason_not_scored(
    tmp_path: Path, detector: FaceDetector, tiny_member
) -> None:
    good = mf.write_clip(tmp_path / "good.mp4", frames=20, face_at=(60, 40, 150))
    bad = mf.truncated_mp4(tmp_path / "bad.mp4", good)
    result = analyze(bad, config("a"), members={"a": tiny_member("a")}, detector=detector)
    assert result.status == "rejected" and result.reason_code == "unreadable"
    assert result.score is None and result.verdict is None
    assert "corrupt" in (result.reason or "")


def test_progress_reports_stages_in_order_up_to_one(
    tmp_path: Path, detector: FaceDetector, tiny_member
) -> None:
    path = mf.write_clip(tmp_path / "clip.mp4", frames=20, face_at=(60, 40, 150))
    seen: list[tuple[str, float]] = []
    analyze(
        path,
        config("a", "b"),
        members={"a": tiny_member("a"), "b": tiny_member("b")},
        detector=detector,
        progress=lambda s, f: seen.append((s, f)),
    )
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    stages = [s for s, _ in seen]
    assert stages[0] == "decode" and stages[-1] == "done" and "a" in stages and "b" in stages


def test_member_subset_runs_only_those(tmp_path: Path, detector: FaceDetector, tiny_member) -> None:
    path = mf.write_image(tmp_path / "face.png", mf.face_image(256), "PNG")
    members = {"a": tiny_member("a"), "b": tiny_member("b")}
    result = analyze(path, config("b"), members=members, detector=detector)
    assert set(result.members) == {"b"} and [m.name for m in result.models] == ["b"]
    with pytest.raises(RegistryError, match="not loaded: c"):
        analyze(path, config("c"), members=members, detector=detector)


def test_kept_taps_are_per_face_and_the_gradcam_layer_is_bounded(
    tmp_path: Path, detector: FaceDetector, tiny_member, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ensemble import pipeline
    from ensemble.members import TAP_GRADCAM, LoadedMember

    plain = tiny_member("a")
    member = LoadedMember(
        spec=plain.spec,
        model=plain.model,
        input_size=64,
        mean=plain.mean,
        std=plain.std,
        backend="onnxruntime",
    )
    path = mf.write_clip(tmp_path / "person.mp4", frames=20, face_at=(60, 40, 160))
    cfg = config("a", frames=6)
    result, data = pipeline.analyze_with_data(
        path, cfg, members={"a": member}, detector=detector, keep_taps=True
    )
    assert data is not None and len(result.faces) == 6
    assert data.taps["a"][TAP_GRADCAM].shape[0] == 6
    # The analysis's logits (ONNX Runtime, batches of 8 with a partial last
    # one) are the PyTorch model's, one crop at a time.
    np.testing.assert_allclose(
        data.logits["a"], plain.logits(data.crops["a"], 1), rtol=1e-4, atol=1e-5
    )
    # without keep_taps nothing is held; over the bound the big layer is not kept
    assert (
        pipeline.analyze_with_data(path, cfg, members={"a": member}, detector=detector)[1].taps
        == {}
    )  # type: ignore[union-attr]
    monkeypatch.setattr(pipeline, "MAX_TAPPED_FACES", 5)
    _, data = pipeline.analyze_with_data(
        path, cfg, members={"a": member}, detector=detector, keep_taps=True
    )
    assert data is not None and TAP_GRADCAM not in data.taps.get("a", {})


def test_face_in_a_portrait_phone_video_is_found_upright(
    tmp_path: Path, detector: FaceDetector, tiny_member
) -> None:
    """Phones store portrait video sideways with a display matrix; the face is
    looked for in the picture as it is shown, where it is upright."""
    results = {}
    for name, rotation in (("upright", None), ("phone", -90)):
        path = mf.write_clip(
            tmp_path / f"{name}.mp4",
            frames=8,
            width=240,
            height=320,
            face_at=(40, 60, 150),
            display_rotation=rotation,
        )
        results[name] = analyze(
            path, config("a", frames=4), members={"a": tiny_member("a")}, detector=detector
        )
    upright, phone = results["upright"], results["phone"]
    assert upright.verdict not in (None, "no_face") and len(upright.faces) == 4
    assert phone.media is not None and phone.media.rotation == 270
    assert phone.verdict == upright.verdict and len(phone.faces) == len(upright.faces)
    for a, b in zip(phone.faces, upright.faces, strict=True):
        assert np.allclose(a.box, b.box, atol=4.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_member_returning_a_non_finite_logit_fails_the_analysis_never_a_score(
    tmp_path: Path, detector: FaceDetector, tiny_member, bad: float
) -> None:
    """NaN compares false against both edges of the band and would read as "uncertain"."""
    path = mf.write_image(tmp_path / "face.png", mf.face_image(256), "PNG")
    members = {"a": tiny_member("a"), "b": tiny_member("b", logit=bad)}
    with pytest.raises(NonFiniteScoreError, match="b returned 1 non-finite logit"):
        analyze(path, config("a", "b"), members=members, detector=detector)


class _TwoLogits(torch.nn.Module):
    """A model with two outputs per crop (a softmax head imported by mistake)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 2)


def test_a_member_with_more_than_one_logit_per_face_fails_the_analysis(
    tmp_path: Path, detector: FaceDetector, tiny_member
) -> None:
    from dataclasses import replace

    path = mf.write_image(tmp_path / "face.png", mf.face_image(256), "PNG")
    two = replace(tiny_member("b"), model=_TwoLogits())
    with pytest.raises(NonFiniteScoreError, match="b returned 2 logit"):
        analyze(
            path, config("a", "b"), members={"a": tiny_member("a"), "b": two}, detector=detector
        )


def test_a_combination_that_is_not_a_number_fails_the_analysis(
    tmp_path: Path, detector: FaceDetector, tiny_member
) -> None:
    """A combination that yields NaN (a broken fit) is an error, not "uncertain"."""
    from ensemble.calibration import Combiner

    class Broken(Combiner):
        def __call__(self, probs):  # type: ignore[no-untyped-def]
            return np.full(len(next(iter(probs.values()))), np.nan)

    path = mf.write_image(tmp_path / "face.png", mf.face_image(256), "PNG")
    with pytest.raises(NonFiniteScoreError, match="combined score"):
        analyze(
            path,
            config("a"),
            members={"a": tiny_member("a")},
            detector=detector,
            combiner=Broken(),
        )


@pytest.mark.parametrize("face", [True, False])
def test_a_result_says_how_many_sampled_frames_were_damaged(
    tmp_path: Path, detector: FaceDetector, tiny_member, monkeypatch: pytest.MonkeyPatch, face: bool
) -> None:
    """A few damaged frames leave a result, which says it rests on the rest."""
    import dataclasses

    from ensemble import pipeline

    path = mf.write_clip(tmp_path / "clip.mp4", frames=20, face_at=(60, 40, 150) if face else None)
    real = pipeline.load_media

    def three_damaged(*args: object, **kw: object) -> object:
        loaded = real(*args, **kw)  # type: ignore[arg-type]
        info = dataclasses.replace(loaded.info, frames_requested=8, frames_missing=3)
        return dataclasses.replace(loaded, info=info, frames=loaded.frames[:5])

    monkeypatch.setattr(pipeline, "load_media", three_damaged)
    result = analyze(path, config("a"), members={"a": tiny_member("a")}, detector=detector)
    assert result.status == "done"
    assert "3 of the 8 frames sampled could not be decoded" in (result.reason or "")
    assert "rests on the 5 that were" in (result.reason or "")
    assert (result.verdict == "no_face") is not face


def test_prepare_finds_missing_weights_before_loading_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A member without weights fails ``prepare`` before the face detector or
    any other member is loaded, and a misspelt TRUSTTRACE_MIRROR name is said
    once, not on every analysis."""
    from ensemble.errors import MissingWeightsError
    from ensemble.pipeline import Analyzer
    from tests.tiny_registry import REGISTRY, install_weights

    weights = install_weights(tmp_path / "w", ["tiny_a"])
    loaded: list[str] = []
    monkeypatch.setattr(FaceDetector, "load", lambda *a, **k: loaded.append("detector") or object())
    missing = AnalysisConfig(weights_dir=weights, members=("tiny_a", "tiny_b"), mirror=())
    with pytest.raises(MissingWeightsError, match="tiny_b"):
        Analyzer(missing, REGISTRY).prepare()
    assert loaded == []
    config = AnalysisConfig(
        weights_dir=weights, cache_dir=tmp_path / "c", members=("tiny_a",), mirror=("tiny_aa",)
    )
    analyzer = Analyzer(config, REGISTRY)
    with caplog.at_level("WARNING"):
        analyzer.prepare()
        analyzer.prepare()
    assert loaded == ["detector"]
    assert caplog.text.count("TRUSTTRACE_MIRROR names no detector of this registry: tiny_aa") == 1
    assert not analyzer.members["tiny_a"].mirror


def test_faces_left_out_are_said_not_dropped_in_silence(
    tmp_path: Path, detector: FaceDetector, tiny_member
) -> None:
    """A face seen in a few sampled frames beside a steady one, and faces
    past the per-frame limit, used to vanish from the result without a word:
    one of them could be the manipulated face."""
    face = mf.face_image(240)
    pictures = []
    for i in range(32):
        img = np.full((320, 640, 3), 90, np.uint8)
        img[40:280, 20:260] = face
        if 10 <= i < 13:  # 3 of 32 samples: under 15%, so not scored
            img[40:280, 380:620] = face
        pictures.append(img)
    path = _clip(tmp_path / "brief.mp4", pictures)
    members = {"a": tiny_member("a")}
    result = analyze(path, config("a", frames=32), members=members, detector=detector)
    assert result.status == "done" and len(result.persons) == 1
    assert "1 face seen in only a few of the 32 sampled frames" in (result.reason or "")

    # Ten faces in one picture, eight analysed: said.
    size, gap = 200, 20
    crowd = np.full((2 * (size + gap) + gap, 5 * (size + gap) + gap, 3), 90, np.uint8)
    small = mf.face_image(size)
    for r in range(2):
        for c in range(5):
            y, x = gap + r * (size + gap), gap + c * (size + gap)
            crowd[y : y + size, x : x + size] = small
    picture = mf.write_image(tmp_path / "crowd.png", crowd, "PNG")
    many = analyze(picture, config("a"), members=members, detector=detector)
    assert many.status == "done" and len(many.persons) == 8
    assert "The image held more than 8 faces" in (many.reason or "")


@pytest.mark.parametrize(("aggregation", "verdict"), [("mean", "uncertain"), ("confident", "fake")])
def test_confident_aggregation_flags_a_person_with_many_confident_fake_frames(
    tmp_path: Path, detector: FaceDetector, tiny_member, aggregation: str, verdict: str
) -> None:
    """13 of 32 frames confidently fake, the rest mildly real: the mean says
    uncertain; selimsef's rule (more than n // 2.5 and more than 11
    confident fakes) says fake. The darker frames stay the same person."""

    from ensemble.config import ScoringConfig

    class DarkIsFake(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.where(x.mean(dim=(1, 2, 3)) < -0.2, 4.0, -2.0)[:, None]

    face = mf.face_image(240)
    pictures = []
    for i in range(32):
        img = np.full((320, 320, 3), 90, np.uint8)
        img[40:280, 40:280] = face // 3 if i < 13 else face
        pictures.append(img)
    path = _clip(tmp_path / "half.mp4", pictures)
    member = tiny_member("planted")
    member.model = DarkIsFake()
    cfg = AnalysisConfig(
        members=("planted",), frames=32, scoring=ScoringConfig(aggregation=aggregation)
    )
    result = analyze(path, cfg, members={"planted": member}, detector=detector)
    assert result.status == "done" and len(result.persons) == 1, result.reason
    assert sum(f.score > 0.8 for f in result.faces) == 13
    assert result.verdict == verdict


def test_faces_too_small_to_judge_are_said_so_not_that_there_was_none(
    tmp_path: Path, blazeface_cache: Path, tiny_member
) -> None:
    from ensemble.config import FaceConfig

    faces = FaceConfig(min_face_px=300)  # the 256-pixel face is "too small" here
    small_detector = FaceDetector.load(faces, blazeface_cache)
    path = mf.write_image(tmp_path / "face.png", mf.face_image(256), "PNG")
    cfg = AnalysisConfig(members=("a",), faces=faces)
    result = analyze(path, cfg, members={"a": tiny_member("a")}, detector=small_detector)
    assert result.status == "done" and result.verdict == "no_face" and result.score is None
    assert "the face seen was smaller than 300 pixels across" in (result.reason or "")
