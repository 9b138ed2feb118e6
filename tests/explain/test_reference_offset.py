"""A reference video that does not start where the submission does is
compared at the same moment, not at the same time from each file's start."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from bench.reference_offset import recode
from ensemble.config import MediaLimits
from ensemble.media import gray_thumbnails, load_media
from ensemble.pipeline import Analyzer
from explain import ExplainConfig, Explainer, explainer
from explain.reference import (
    MIN_PROBES,
    TimeOffset,
    estimate_offset,
    reference_offset,
    signature,
)
from tests import media_factory as mf

FPS = 25.0


def _scene(n: int, seed: int) -> np.ndarray:
    """``n`` frames of a scene that changes smoothly and never repeats, as
    grey 32 px pictures, over a fixed background."""
    rng = np.random.default_rng(seed)
    walk = rng.normal(size=(n, 8, 8)).cumsum(axis=0) * 6.0
    background = rng.uniform(60, 200, size=(8, 8))
    coarse = np.clip(background + walk, 0, 255)
    return np.kron(coarse, np.ones((4, 4))).astype(np.uint8)


def _recoded(frames: np.ndarray, seed: int) -> np.ndarray:
    """The frames with the noise a second encoding adds."""
    rng = np.random.default_rng(seed)
    noisy = frames.astype(float) + rng.normal(0, 3.0, frames.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _sampled(frames: np.ndarray, first: int, last: int, n: int) -> tuple[list[float], np.ndarray]:
    """``n`` frames evenly between ``first`` and ``last`` (inclusive), with
    their times counted from frame ``first``."""
    picks = np.linspace(first, last, n).round().astype(int)
    return [float((i - first) / FPS) for i in picks], frames[picks]


def _times(n: int) -> np.ndarray:
    return np.arange(n) / FPS


def test_a_submission_cut_from_the_reference_is_placed_where_it_was_cut() -> None:
    scene = _scene(200, seed=1)
    times, probes = _sampled(_recoded(scene, 2), 50, 179, 16)
    found = estimate_offset(times, probes, _times(200), scene)
    assert found.aligned and found.seconds == pytest.approx(50 / FPS, abs=0.5 / FPS)
    assert found.score is not None and found.score > 0.9


def test_a_reference_trimmed_before_it_was_handed_in_is_placed_too() -> None:
    scene = _scene(200, seed=3)
    times, probes = _sampled(_recoded(scene, 4), 0, 199, 32)
    trimmed = scene[50:180]  # its first frame is the submission's 2 s
    found = estimate_offset(times, probes, _times(130), trimmed)
    assert found.aligned and found.seconds == pytest.approx(-50 / FPS, abs=0.5 / FPS)


def test_a_reference_with_the_same_timing_keeps_the_same_times() -> None:
    scene = _scene(120, seed=5)
    times, probes = _sampled(_recoded(scene, 6), 0, 119, 16)
    found = estimate_offset(times, probes, _times(120), scene)
    assert found == TimeOffset(0.0, True, found.score) and found.score > 0.9


def test_an_unrelated_or_unchanging_reference_is_not_aligned() -> None:
    times, probes = _sampled(_scene(120, seed=7), 0, 119, 16)
    other = estimate_offset(times, probes, _times(120), _scene(120, seed=8))
    assert not other.aligned and other.seconds == 0.0
    assert "no moment of the reference matches" in other.why
    still = np.repeat(_scene(1, seed=9), 120, axis=0)
    frozen = estimate_offset(times, probes, _times(120), _recoded(still, 10))
    assert not frozen.aligned and frozen.seconds == 0.0
    # A submission that never changes cannot be placed either.
    frozen_probes = _recoded(np.repeat(_scene(1, seed=11), 16, axis=0), 12)
    assert not estimate_offset(times, frozen_probes, _times(120), _scene(120, 7)).aligned


def test_too_few_frames_are_not_placed() -> None:
    scene = _scene(60, seed=13)
    times, probes = _sampled(scene, 10, 40, MIN_PROBES - 1)
    found = estimate_offset(times, probes, _times(60), scene)
    assert not found.aligned and "too few frames" in found.why


def test_thumbnails_are_every_frame_upright_at_the_times_frames_are_read(tmp_path: Path) -> None:
    """A phone's portrait video (stored turned, with a display matrix) gives
    upright thumbnails, as its analysed frames are."""
    clip = mf.write_clip(
        tmp_path / "phone.mp4", frames=20, width=160, height=240, display_rotation=90, gop=4
    )
    thumbs = gray_thumbnails(clip, MediaLimits(), 32, 10**12, 10**6)
    assert thumbs is not None
    times, pictures = thumbs
    assert pictures.shape == (20, 32, 32)
    read = load_media(clip, MediaLimits(), 5)
    for frame in read.frames:
        i = int(np.argmin(np.abs(times - frame.time_s)))
        assert times[i] == pytest.approx(frame.time_s, abs=1e-6)
        ours = pictures[i].astype(float).ravel()
        theirs = signature(frame.image).astype(float).ravel()
        assert np.corrcoef(ours, theirs)[0, 1] > 0.95
        # Turned the wrong way, it would not match.
        turned = np.rot90(signature(frame.image)).astype(float).ravel()
        assert np.corrcoef(ours, turned)[0, 1] < 0.8
    # Decoding every frame of a longer reference is not attempted.
    assert gray_thumbnails(clip, MediaLimits(), 32, 20 * 160 * 240 - 1, 10**6) is None
    assert gray_thumbnails(clip, MediaLimits(), 32, 10**12, 19) is None


def _mask_means(index) -> list[float]:
    means = []
    for art in index.artifacts:
        if art.kind == "ssim_reference":
            means.append(float(re.search(r"mean ([0-9.]+)", art.caption).group(1)))
    return means


def test_a_submission_cut_from_the_reference_is_compared_at_the_same_moment(
    tiny_analyzer: Analyzer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = mf.write_clip(tmp_path / "original.mp4", frames=60, face_at=(60, 30, 170), gop=5)
    cut = mf.cut_clip(original, tmp_path / "cut.mp4", first=13)  # starts 1.3 s in
    config = ExplainConfig(kinds=("ssim_reference",))
    result, index = Explainer(tiny_analyzer, config).run(
        cut, tmp_path / "aligned", reference=original
    )
    assert index is not None and result.status == "done"
    masks = [a for a in index.artifacts if a.kind == "ssim_reference"]
    assert masks and len(masks) == len(result.faces)
    for art in masks:
        assert f"reference at {art.time + 1.3:.2f} s (the same moment: +1.30 s" in art.caption
    aligned = _mask_means(index)
    # Before: the frames at equal times from each file's start.
    monkeypatch.setattr(
        explainer, "reference_offset", lambda *a, **k: TimeOffset(0.0, False, why="test")
    )
    _, unaligned_index = Explainer(tiny_analyzer, config).run(
        cut, tmp_path / "unaligned", reference=original
    )
    assert unaligned_index is not None
    unaligned = _mask_means(unaligned_index)
    # The cut is the same pictures: nothing differs at the same moment; the
    # same times from each start compare other frames.
    assert max(aligned) < 0.001
    assert min(unaligned) > 0.002


def test_a_reference_that_cannot_be_searched_is_still_compared_at_equal_times(
    tiny_analyzer: Analyzer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Placing the reference in time is a refinement: its failure must not
    cost the masks the comparison at equal times makes."""
    from ensemble.errors import UnreadableMediaError
    from explain import reference

    def fails(*args: object, **kwargs: object) -> None:
        raise UnreadableMediaError("No frame of the video could be decoded")

    monkeypatch.setattr(reference, "gray_thumbnails", fails)
    original = mf.write_clip(tmp_path / "original.mp4", frames=30, face_at=(60, 30, 170), gop=5)
    result, index = Explainer(tiny_analyzer, ExplainConfig(kinds=("ssim_reference",))).run(
        original, tmp_path / "out", reference=original
    )
    assert index is not None and result.status == "done"
    masks = [a for a in index.artifacts if a.kind == "ssim_reference"]
    assert len(masks) == len(result.faces) > 0
    assert all("not aligned, the reference could not be searched" in a.caption for a in masks)
    assert "ssim_reference" not in index.missing


@pytest.mark.shared
def test_the_ffpp_fake_cut_three_seconds_in_is_placed_in_its_original(
    shared: Path, tmp_path: Path
) -> None:
    videos = shared / "media" / "videos"
    cut = recode(
        videos / "tranthuhoai3786_000_003.mp4", tmp_path / "cut.mp4", 3.0, preset="ultrafast"
    )
    read = load_media(cut, MediaLimits(), 16)
    found = reference_offset(
        videos / "cyshih704_real.mp4",
        [f.time_s for f in read.frames],
        [f.image for f in read.frames],
        MediaLimits(),
    )
    assert found.aligned and found.seconds == pytest.approx(3.0, abs=0.5 / 25)
    # The uncut fake lines up with its original at the same times.
    whole = load_media(videos / "tranthuhoai3786_000_003.mp4", MediaLimits(), 16)
    same = reference_offset(
        videos / "cyshih704_real.mp4",
        [f.time_s for f in whole.frames],
        [f.image for f in whole.frames],
        MediaLimits(),
    )
    assert same.aligned and same.seconds == 0.0
    # Another person's video is not placed in it.
    other = load_media(videos / "tranthuhoai3786_009.mp4", MediaLimits(), 16)
    unrelated = reference_offset(
        videos / "cyshih704_real.mp4",
        [f.time_s for f in other.frames],
        [f.image for f in other.frames],
        MediaLimits(),
    )
    assert not unrelated.aligned
