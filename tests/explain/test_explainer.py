"""The Explainer end to end: artifacts, index, progress, reference, bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ensemble.config import MediaLimits
from ensemble.pipeline import Analyzer
from explain import ExplainConfig, Explainer, ExplanationIndex, InvalidReferenceError
from explain.charts import score_series
from explain.explainer import select_faces
from explain.index import OUT_OF_TIME
from explain.reference import frames_at
from explain.render import cut_square, face_square, resized
from tests import media_factory as mf

KINDS = {"face", "frame", "gradcam", "attention", "ssim_temporal", "ssim_reference", "chart"}


def _check_files(out: Path, index: ExplanationIndex, max_side: int) -> None:
    faces = {(a.person, a.frame): a for a in index.artifacts if a.kind == "face"}
    for art in index.artifacts:
        if art.kind in ("gradcam", "attention"):
            # Drawn on the face crop of the same person and frame, at its size.
            face = faces[(art.person, art.frame)]
            assert (art.width, art.height) == (face.width, face.height) == (face.width, face.width)
        path = out / art.path
        assert path.is_file(), art.path
        if art.media_type in ("image/jpeg", "image/webp", "image/png"):
            with Image.open(path) as im:
                assert im.size == (art.width, art.height)
                if art.kind != "chart":
                    assert max(im.size) <= max_side
        assert "manipulated region" not in art.caption


def test_a_video_gets_every_kind_of_artifact_and_an_index(
    tiny_analyzer: Analyzer, tmp_path: Path
) -> None:
    clip = mf.write_clip(
        tmp_path / "person.mp4", frames=24, width=320, height=240, face_at=(60, 30, 170)
    )
    reference = mf.write_clip(
        tmp_path / "original.mp4", frames=24, width=320, height=240, face_at=(60, 30, 170), gop=5
    )
    config = ExplainConfig(top_k=2, max_side=200, face_side=96)
    stages: list[tuple[str, float]] = []
    out = tmp_path / "out"
    result, index = Explainer(tiny_analyzer, config).run(
        clip, out, reference=reference, progress=lambda s, f: stages.append((s, f))
    )
    assert result.status == "done" and index is not None
    assert result.to_dict()["members"] == tiny_analyzer.analyze(clip).to_dict()["members"]
    counts = Counter(a.kind for a in index.artifacts)
    assert set(counts) == KINDS
    n_faces = len(result.faces)
    persons = len(result.persons)
    # top 2 + the least suspicious per person, for each of the two members.
    assert counts["gradcam"] == 2 * min(n_faces, 3 * persons)
    gradcam_captions = [a.caption for a in index.artifacts if a.kind == "gradcam"]
    assert sum("least suspicious" in c for c in gradcam_captions) == 2 * persons
    assert all("looked" in c and "\n" not in c for c in gradcam_captions)
    assert counts["attention"] == n_faces  # only tiny_att has an attention map
    assert {a.member for a in index.artifacts if a.kind == "attention"} == {"tiny_att"}
    assert counts["ssim_temporal"] == n_faces - persons
    assert counts["ssim_reference"] == n_faces
    for art in index.artifacts:
        if art.kind == "ssim_reference":
            assert f"reference at {art.time:.2f} s (the same" in art.caption
    assert counts["chart"] == 2
    assert counts["face"] == n_faces
    assert counts["frame"] == len({f.position for f in result.faces})
    assert all(a.person is None for a in index.artifacts if a.kind == "frame")
    _check_files(out, index, 200)
    # The chart series carries each face's box for the viewer's whole-frame inset.
    for person in index.series["persons"]:
        for point in person["points"]:
            x0, y0, x1, y1 = point["box"]
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    on_disk = json.loads((out / "index.json").read_text())
    assert on_disk == index.to_dict()
    frames = {f.index: f.time_s for f in result.frames}
    for art in index.artifacts:
        if art.kind != "chart":
            assert art.frame in frames and art.time == pytest.approx(frames[art.frame], abs=1e-3)
    # Progress runs from the analysis through each kind to done, never backwards.
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions) and stages[-1] == ("done", 1.0)
    assert {"gradcam", "attention", "ssim_temporal", "ssim_reference", "chart"} <= {
        s for s, _ in stages
    }


def test_a_still_reference_is_compared_with_every_face_and_named_without_a_time(
    tiny_analyzer: Analyzer, tmp_path: Path
) -> None:
    clip = mf.write_clip(
        tmp_path / "person.mp4", frames=24, width=320, height=240, face_at=(60, 30, 170)
    )
    still = np.zeros((240, 320, 3), np.uint8)
    still[30:200, 60:230] = mf.face_image(170)
    reference = mf.write_image(tmp_path / "original.png", still, "PNG")
    config = ExplainConfig(kinds=("ssim_reference",))
    result, index = Explainer(tiny_analyzer, config).run(
        clip, tmp_path / "out", reference=reference
    )
    assert index is not None and index.missing == {}
    masks = [a for a in index.artifacts if a.kind == "ssim_reference"]
    assert len(masks) == len(result.faces) > 1
    assert {a.time for a in masks} == {result.frames[f.position].time_s for f in result.faces}
    for art in masks:
        assert art.caption.startswith("SSIM: submitted | reference image | where they differ")
        assert " s |" not in art.caption


def test_no_folder_for_the_explanations_costs_them_not_the_verdict(
    tiny_analyzer: Analyzer, tmp_path: Path
) -> None:
    """The folder cannot be made (here a file is in the way; a full disk or a
    missing permission alike): every kind is missing, with the reason, and
    the finished analysis is returned. It raised, and the job failed."""
    clip = mf.write_clip(tmp_path / "person.mp4", frames=12, face_at=(60, 30, 170))
    (tmp_path / "artifacts").write_text("not a folder")
    config = ExplainConfig(kinds=("face", "gradcam", "chart"))
    result, index = Explainer(tiny_analyzer, config).run(clip, tmp_path / "artifacts" / "run-1")
    assert result.status == "done" and result.verdict in ("fake", "real", "uncertain")
    assert index is not None and index.artifacts == ()
    assert set(index.missing) == {"face", "gradcam", "chart"}
    assert all(
        r.startswith(("NotADirectoryError", "FileExistsError")) for r in index.missing.values()
    )
    assert index.series == score_series(result)


def test_an_image_gets_overlays_but_no_temporal_masks(
    tiny_analyzer: Analyzer, tmp_path: Path
) -> None:
    image = np.zeros((300, 400, 3), np.uint8)
    image[40:296, 70:326] = mf.face_image(256)
    path = mf.write_image(tmp_path / "face.png", image, "PNG")
    result, index = Explainer(tiny_analyzer, ExplainConfig(image_format="webp")).run(
        path, tmp_path / "out"
    )
    assert index is not None and result.verdict in ("fake", "real", "uncertain")
    counts = Counter(a.kind for a in index.artifacts)
    assert counts == {"face": 1, "frame": 1, "gradcam": 2, "attention": 1, "chart": 2}
    config = ExplainConfig()
    gradcam = next(a for a in index.artifacts if a.kind == "gradcam")
    assert gradcam.frame == 0 and gradcam.time == 0.0 and gradcam.media_type == "image/webp"
    assert (gradcam.width, gradcam.height) == (config.face_side, config.face_side)
    whole = next(a for a in index.artifacts if a.kind == "frame")
    assert (whole.width, whole.height) == (400, 300)

    def decoded(kind: str) -> np.ndarray:
        art = next(a for a in index.artifacts if a.kind == kind)
        with Image.open(tmp_path / "out" / art.path) as im:
            return np.asarray(im.convert("RGB")).astype(int)

    # The face crop is the frame around the face box, enlarged to face_side.
    face = result.faces[0]
    square = face_square(face.box, config.face_margin)
    expected = resized(cut_square(image, square), config.face_side).astype(int)
    assert np.abs(decoded("face") - expected).mean() < 6
    # The Grad-CAM layer is that crop with the colour map over the face.
    centre = slice(config.face_side // 3, 2 * config.face_side // 3)
    assert np.abs(decoded("gradcam")[centre, centre] - expected[centre, centre]).mean() > 15


def test_kinds_can_be_chosen(tiny_analyzer: Analyzer, tmp_path: Path) -> None:
    path = mf.write_image(tmp_path / "face.png", mf.face_image(256), "PNG")
    _, index = Explainer(tiny_analyzer, ExplainConfig(kinds=("chart",))).run(path, tmp_path / "o")
    assert index is not None and {a.kind for a in index.artifacts} == {"chart"}


def test_rejected_media_gets_no_index(tiny_analyzer: Analyzer, tmp_path: Path) -> None:
    bad = mf.text_as_mp4(tmp_path / "notes.mp4")
    result, index = Explainer(tiny_analyzer).run(bad, tmp_path / "out")
    assert result.status == "rejected" and index is None
    assert not (tmp_path / "out" / "index.json").exists()


def test_media_without_faces_gets_an_empty_index(tiny_analyzer: Analyzer, tmp_path: Path) -> None:
    room = mf.write_clip(tmp_path / "room.mp4", frames=12)
    result, index = Explainer(tiny_analyzer).run(room, tmp_path / "out")
    assert result.verdict == "no_face" and index is not None
    assert [a.kind for a in index.artifacts] == ["chart", "chart"]
    assert index.series["persons"] == []


def test_an_unusable_reference_is_refused_before_any_work(
    tiny_analyzer: Analyzer, tmp_path: Path
) -> None:
    path = mf.write_image(tmp_path / "face.png", mf.face_image(256), "PNG")
    notes = mf.text_as_mp4(tmp_path / "notes.mp4")
    with pytest.raises(InvalidReferenceError, match="The reference could not be used"):
        Explainer(tiny_analyzer).run(path, tmp_path / "out", reference=notes)
    assert not (tmp_path / "out").exists()


def test_selection_takes_the_top_k_and_the_least_suspicious_per_person(
    tiny_analyzer: Analyzer, tmp_path: Path
) -> None:
    clip = mf.write_clip(tmp_path / "p.mp4", frames=24, face_at=(60, 30, 170))
    result = tiny_analyzer.analyze(clip)
    chosen = select_faces(result, top_k=2, include_least=True)
    for person, idx in chosen.items():
        scores = sorted((f.score for f in result.faces if f.person == person), reverse=True)
        picked = [result.faces[i].score for i in idx]
        assert picked[:2] == scores[:2] and picked[-1] == scores[-1]
    assert all(len(v) <= 2 for v in select_faces(result, 2, False).values())


def test_a_phone_reference_video_is_compared_upright(tmp_path: Path) -> None:
    upright = mf.write_clip(tmp_path / "upright.mp4", frames=10)
    phone = mf.write_clip(tmp_path / "phone.mp4", frames=10, display_rotation=90)
    times = [0.0, 0.5]
    turned = frames_at(phone, times, MediaLimits())
    expected = frames_at(upright, times, MediaLimits())
    for t in times:
        assert turned[t].shape == expected[t].shape == (240, 320, 3)
        assert np.abs(turned[t].astype(int) - expected[t].astype(int)).mean() < 8


@pytest.mark.parametrize("damage", ["some_frames", "all"])
def test_a_reference_damaged_after_its_check_costs_its_masks_not_the_analysis(
    tiny_analyzer: Analyzer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    from explain import explainer as module

    clip = mf.write_clip(tmp_path / "person.mp4", frames=24, face_at=(60, 30, 170))
    reference = mf.write_clip(tmp_path / "original.mp4", frames=24, face_at=(60, 30, 170))
    real_frames_at = module.frames_at

    def damaged(path: Path, times: list[float], limits: MediaLimits) -> dict:
        if damage == "all":
            raise InvalidReferenceError("The reference could not be used: damaged")
        frames = real_frames_at(path, times, limits)
        return {t: im for t, im in frames.items() if t < 1.0}  # decoding stopped at 1 s

    monkeypatch.setattr(module, "frames_at", damaged)
    result, index = Explainer(tiny_analyzer).run(clip, tmp_path / "out", reference=reference)
    assert result.status == "done" and index is not None
    masks = [a for a in index.artifacts if a.kind == "ssim_reference"]
    early = [f for f in result.faces if result.frames[f.position].time_s < 1.0]
    assert len(masks) == (len(early) if damage == "some_frames" else 0)
    assert 0 < len(early) < len(result.faces)
    if damage == "all":  # said, not only logged
        assert index.missing == {
            "ssim_reference": "InvalidReferenceError: The reference could not be used: damaged"
        }
    else:
        assert index.missing == {}
    assert {a.kind for a in index.artifacts} >= {"gradcam", "attention", "chart"}


def test_a_reference_face_elsewhere_in_the_frame_is_not_compared() -> None:
    from ensemble.blazeface import Detection
    from explain.ssim import matching_face

    kps = ((0.0, 0.0),) * 6
    left = (20.0, 40.0, 100.0, 120.0)
    far = Detection((220.0, 40.0, 300.0, 120.0), 0.9, kps)
    near = Detection((30.0, 45.0, 110.0, 125.0), 0.9, kps)
    beside = Detection((110.0, 40.0, 190.0, 120.0), 0.9, kps)  # centre one face away
    assert matching_face(left, (240, 320), [far], (240, 320)) is None
    assert matching_face(left, (240, 320), [far, near], (240, 320)) == near
    assert matching_face(left, (240, 320), [beside], (240, 320)) == beside
    # Compared relative to each frame: the reference at twice the resolution.
    big = Detection(tuple(2 * v for v in near.box), 0.9, kps)  # type: ignore[arg-type]
    assert matching_face(left, (240, 320), [big], (480, 640)) == big


def test_black_padding_past_a_frame_edge_is_not_a_difference() -> None:
    """The same face, whole in one frame and cut by the other's left edge: the
    padding where it ran past the edge is left out, not shown as changed."""
    from explain.ssim import ssim_mask

    frame = np.zeros((320, 320, 3), np.uint8)
    frame[32:288, 32:288] = mf.face_image(256)
    eyes, nose_mouth, ears = (
        ((132.0, 142.0), (192.0, 142.0)),
        ((162.0, 172.0), (162.0, 202.0)),
        (
            (92.0, 150.0),
            (232.0, 150.0),
        ),
    )
    kps = (*eyes, *nose_mouth, *ears)
    cut = 70
    shifted = tuple((x - cut, y) for x, y in kps)
    mask = ssim_mask(frame, kps, frame[:, cut:], shifted, 128)
    padded = mask.second.max(axis=2) == 0
    assert padded[:, :10].all()  # the cut frame's face runs past its left edge
    assert mask.difference[padded].max() == 0.0
    assert mask.mean < 0.02  # what both frames show is the same


def test_a_kind_that_fails_costs_its_own_files_not_the_result(
    tiny_analyzer: Analyzer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Grad-CAM out of memory halfway: its files and entries go, the other
    kinds and the verdict stay, and the index says what is missing."""
    real = Explainer._gradcam

    def half_then_fail(self: Explainer, writer: Any, *args: Any) -> None:
        real(self, writer, *args)  # writes its files and entries first
        raise MemoryError("out of memory")

    monkeypatch.setattr(Explainer, "_gradcam", half_then_fail)
    clip = mf.write_clip(tmp_path / "p.mp4", frames=12, face_at=(60, 40, 150))
    out = tmp_path / "out"
    result, index = Explainer(tiny_analyzer).run(clip, out)
    assert result.status == "done" and index is not None
    assert index.missing == {"gradcam": "MemoryError: out of memory"}
    kinds = {a.kind for a in index.artifacts}
    assert "gradcam" not in kinds and {"face", "attention", "chart"} <= kinds
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == {a.path for a in index.artifacts} | {"index.json"}
    assert ExplanationIndex.read(out).missing == index.missing


def test_one_member_s_failed_heatmaps_cost_only_that_member_s(
    tiny_analyzer: Analyzer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from explain import explainer as module

    real = module.gradcam_maps

    def fails_for_one(member: Any, *args: Any, **kwargs: Any) -> Any:
        if member.name == "tiny_att":
            raise MemoryError("out of memory in the full network")
        return real(member, *args, **kwargs)

    monkeypatch.setattr(module, "gradcam_maps", fails_for_one)
    clip = mf.write_clip(tmp_path / "p.mp4", frames=12, face_at=(60, 40, 150))
    out = tmp_path / "out"
    result, index = Explainer(tiny_analyzer).run(clip, out)
    assert result.status == "done" and index is not None
    # Before: every member's heatmaps were removed with the one that failed.
    by = {a.member for a in index.artifacts if a.kind == "gradcam"}
    assert by == {"tiny_a"}
    assert index.missing == {"gradcam": "MemoryError: tiny_att: out of memory in the full network"}
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == {a.path for a in index.artifacts} | {"index.json"}


def test_an_interrupt_is_not_taken_for_a_failed_kind(
    tiny_analyzer: Analyzer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class StopError(Exception):
        pass

    def stop(*_: Any) -> None:
        raise StopError

    monkeypatch.setattr(Explainer, "_attention", stop)
    clip = mf.write_clip(tmp_path / "p.mp4", frames=12, face_at=(60, 40, 150))
    with pytest.raises(StopError):
        Explainer(tiny_analyzer, interrupts=(StopError,)).run(clip, tmp_path / "out")


def test_time_running_out_while_explaining_keeps_the_verdict_and_what_was_made(
    tiny_analyzer: Analyzer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class OutOfTimeError(Exception):
        pass

    real = Explainer._gradcam

    def half_then_time_up(self: Explainer, writer: Any, *args: Any) -> None:
        real(self, writer, *args)  # some of its files are written
        raise OutOfTimeError

    monkeypatch.setattr(Explainer, "_gradcam", half_then_time_up)
    clip = mf.write_clip(tmp_path / "p.mp4", frames=12, face_at=(60, 40, 150))
    out = tmp_path / "out"
    explainer = Explainer(tiny_analyzer, deadlines=(OutOfTimeError,))
    result, index = explainer.run(clip, out)
    # Before: the time limit lost the verdict that was already made.
    assert result.status == "done" and result.score is not None and index is not None
    kinds = explainer.config.kinds
    # (no reference video, so no masks against one were to be made)
    late = [k for k in kinds[kinds.index("gradcam") :] if k != "ssim_reference"]
    assert index.missing == dict.fromkeys(late, OUT_OF_TIME)
    made = {a.kind for a in index.artifacts}
    assert made and made <= set(kinds[: kinds.index("gradcam")])
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == {a.path for a in index.artifacts} | {"index.json"}


def test_time_running_out_inside_one_member_is_not_taken_for_that_member_s_failure(
    tiny_analyzer: Analyzer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from explain import explainer as module

    class OutOfTimeError(Exception):
        pass

    real = module.gradcam_maps

    def time_up_at_the_second(member: Any, *args: Any, **kwargs: Any) -> Any:
        if member.name == "tiny_att":
            raise OutOfTimeError
        return real(member, *args, **kwargs)

    monkeypatch.setattr(module, "gradcam_maps", time_up_at_the_second)
    clip = mf.write_clip(tmp_path / "p.mp4", frames=12, face_at=(60, 40, 150))
    out = tmp_path / "out"
    result, index = Explainer(tiny_analyzer, deadlines=(OutOfTimeError,)).run(clip, out)
    assert result.status == "done" and index is not None
    assert index.missing["gradcam"] == OUT_OF_TIME
    assert not [a for a in index.artifacts if a.kind == "gradcam"]
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == {a.path for a in index.artifacts} | {"index.json"}


def test_time_running_out_while_scoring_stops_the_run(
    tiny_analyzer: Analyzer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class OutOfTimeError(Exception):
        pass

    def time_up(*_: Any, **__: Any) -> None:
        raise OutOfTimeError

    monkeypatch.setattr(tiny_analyzer, "analyze_with_data", time_up)
    clip = mf.write_clip(tmp_path / "p.mp4", frames=12, face_at=(60, 40, 150))
    with pytest.raises(OutOfTimeError):
        Explainer(tiny_analyzer, deadlines=(OutOfTimeError,)).run(clip, tmp_path / "out")


def test_captions_say_when_a_score_averages_the_face_and_its_mirror(
    tiny_weights: Path, blazeface_cache: Path, tmp_path: Path
) -> None:
    import dataclasses

    from tests.tiny_registry import REGISTRY, explain_config

    config = dataclasses.replace(
        explain_config(tiny_weights, blazeface_cache), mirror=("tiny_att",)
    )
    analyzer = Analyzer(config, REGISTRY)
    image = mf.write_image(tmp_path / "face.png", mf.face_image(256), "PNG")
    result, index = Explainer(analyzer, ExplainConfig(top_k=1)).run(image, tmp_path / "out")
    assert index is not None
    assert [m.mirrored for m in result.models] == [False, True]  # tiny_a, tiny_att
    note = "the score averages the face and its mirror image"
    by_member = {
        (a.kind, a.member): a.caption for a in index.artifacts if a.kind in ("gradcam", "attention")
    }
    assert note in by_member[("gradcam", "tiny_att")]
    assert note in by_member[("attention", "tiny_att")]
    assert note not in by_member[("gradcam", "tiny_a")]
