"""The frame viewer's data (analyses.viewer): entries, tabs, top-k, bars."""

from __future__ import annotations

import pytest

from analyses.models import Artifact, Submission
from analyses.viewer import TOP_K, band_percent, build_viewer, most_suspicious, score_bars


def _series(scores: dict[int, list[float]]) -> dict:
    return {
        "threshold": 0.5,
        "uncertain_band": 0.1,
        "persons": [
            {
                "id": person,
                "points": [
                    {"frame": 10 * i, "time": i / 2, "score": s, "members": {"m": s}}
                    for i, s in enumerate(values)
                ],
            }
            for person, values in scores.items()
        ],
    }


def _art(
    kind: str, frame: int | None, person: int | None, member: str = "", pk: int = 0
) -> Artifact:
    return Artifact(pk=pk, kind=kind, frame=frame, person=person, member=member, caption=kind)


def test_the_most_suspicious_face_is_selected_and_the_filmstrip_keeps_the_top_k() -> None:
    scores = [0.1 + 0.02 * i for i in range(20)]
    scores[3] = 0.99
    viewer = build_viewer(_series({0: scores, 1: [0.2, 0.3]}), [], lambda a: "")
    assert len(viewer.entries) == 22 and viewer.persons == [0, 1]
    current = viewer.current
    assert current is not None and (current.person, current.frame) == (0, 30)
    strip = viewer.filmstrip(0)
    assert TOP_K == 8 and [e.frame for e in strip] == [30, 190, 180, 170, 160, 150, 140, 130]
    assert [e.score for e in strip] == sorted((e.score for e in strip), reverse=True)
    assert [e.frame for e in viewer.filmstrip(1)] == [10, 0]
    assert len(viewer.filmstrip(0, everything=True)) == 20 and viewer.count(1) == 2
    viewer.select_person(1)  # the result page's ?person=1
    assert viewer.current is not None and (viewer.current.person, viewer.current.frame) == (1, 10)
    viewer.select_person(7)
    assert viewer.current.person == 1


def test_layers_attach_to_their_person_and_frame_and_tabs_follow_the_kinds() -> None:
    arts = [
        _art("ssim_temporal", 10, 0, pk=1),
        _art("gradcam", 10, 0, "b", pk=2),
        _art("gradcam", 0, 0, "a", pk=3),
        _art("face", 10, 0, pk=4),
        _art("frame", 10, None, pk=5),
        _art("attention", 10, 1, "a", pk=6),
        _art("chart", None, None, pk=7),
    ]
    viewer = build_viewer(_series({0: [0.2, 0.4], 1: [0.3, 0.1]}), arts, lambda a: f"/a/{a.pk}")
    assert [t.key for t in viewer.tabs] == [
        "gradcam:a",
        "gradcam:b",
        "attention:a",
        "ssim_temporal",
    ]
    assert [t.overlay for t in viewer.tabs] == [True, True, True, False]
    by = {(e.person, e.frame): e for e in viewer.entries}
    assert set(by[(0, 10)].layers) == {"gradcam:b", "ssim_temporal"}
    assert by[(0, 10)].face == "/a/4" and by[(0, 10)].whole == by[(1, 10)].whole == "/a/5"
    assert set(by[(1, 10)].layers) == {"attention:a"} and by[(0, 0)].face == ""


def test_member_bars_say_which_side_of_the_band_each_score_is_on() -> None:
    sub = Submission(threshold=0.5, uncertain_band=0.1, members={"c": 0.55, "a": 0.9, "b": 0.2})
    assert [(b.name, b.side, b.percent) for b in score_bars(sub)] == [
        ("a", "fake", 90.0),
        ("b", "real", 20.0),
        ("c", "uncertain", 55.0),
    ]
    assert band_percent(sub) == (40.0, 20.0, 50.0)


@pytest.mark.parametrize(
    ("threshold", "band", "scores"),
    [(0.5, 0.1, [0.4, 0.6, 0.5, 0.39, 0.61]), (0.5, 0.0, [0.5, 0.49]), (0.3, 0.05, [0.35, 0.25])],
)
def test_a_member_bar_at_the_band_edge_takes_the_side_the_verdict_would(
    threshold: float, band: float, scores: list[float]
) -> None:
    """A member at exactly the band's top edge showed "uncertain" while the
    verdict's rule calls that score fake."""
    from ensemble.config import ScoringConfig
    from ensemble.scoring import verdict_for

    config = ScoringConfig(threshold=threshold, uncertain_band=band)
    sub = Submission(
        threshold=threshold,
        uncertain_band=band,
        members={f"m{i}": s for i, s in enumerate(scores)},
    )
    assert {b.name: b.side for b in score_bars(sub)} == {
        f"m{i}": verdict_for(s, config) for i, s in enumerate(scores)
    }


def test_most_suspicious_point_of_a_series() -> None:
    assert most_suspicious(_series({0: [0.2, 0.4], 1: [0.9, 0.1]})) == (1, 0)
    assert most_suspicious({}) is None


@pytest.mark.parametrize(
    "scores",
    [
        {0: [0.2, 0.9], 1: [0.9, 0.1]},  # a tie: person 1's earlier frame
        {0: [0.9, 0.1], 1: [0.9, 0.3]},  # a tie in the same frame: person 0
        {0: [0.5, 0.5, 0.7], 1: [0.7, 0.2]},
        {3: [0.4], 1: [0.4, 0.4]},
    ],
)
def test_the_thumbnail_and_the_page_open_on_the_same_face_when_scores_tie(scores) -> None:
    """The queue's thumbnail broke ties by the earlier frame, the viewer by the
    lower person: a moderator saw one face in the queue and another on opening it."""
    series = _series(scores)
    viewer = build_viewer(series, [], lambda a: "")
    current = viewer.current
    assert current is not None
    assert most_suspicious(series) == (current.person, current.frame)
