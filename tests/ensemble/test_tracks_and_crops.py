from __future__ import annotations

import numpy as np
import pytest

from ensemble.blazeface import Detection
from ensemble.crops import CropPolicy, crop_face, crop_region
from ensemble.tracks import (
    all_tracks,
    different_people,
    face_look,
    faces_left_out,
    keep_tracks,
    link_tracks,
    max_track_gap,
)
from tests import media_factory as mf

KP = ((0.0, 0.0),) * 6


def det(x: float, y: float, size: float = 50, score: float = 0.9) -> Detection:
    return Detection((x, y, x + size, y + size), score, KP)


def test_two_people_become_two_tracks_across_frames() -> None:
    frames = [[det(10 + 2 * i, 10), det(300 - 2 * i, 40)] for i in range(10)]
    tracks = link_tracks(frames, iou_threshold=0.25, min_fraction=0.15)
    assert len(tracks) == 2
    assert [len(t.detections) for t in tracks] == [10, 10]
    left, right = tracks
    assert all(d.box[0] < 100 for _, d in left.detections)
    assert all(d.box[0] > 200 for _, d in right.detections)


def test_track_survives_a_missed_frame() -> None:
    frames = [[det(10, 10)], [], [det(12, 10)], [det(14, 11)]]
    tracks = link_tracks(frames, 0.25, 0.15)
    assert len(tracks) == 1 and tracks[0].frames == (0, 2, 3)


def _pattern(seed: int, tint: tuple[int, int, int]) -> np.ndarray:
    """A 'face' of its own: a smooth random pattern in one tint."""
    grey = mf.noise_frame(64, 64, seed).mean(axis=2, keepdims=True)
    return np.clip(grey * np.array(tint) / 255.0, 0, 255).astype(np.uint8)


def test_faces_that_differ_in_pattern_and_colour_are_two_people() -> None:
    box = (0.0, 0.0, 64.0, 64.0)
    a = face_look(_pattern(1, (255, 200, 160)), box)
    a_later = face_look(np.clip(_pattern(1, (255, 200, 160)) * 1.15, 0, 255).astype(np.uint8), box)
    b = face_look(_pattern(2, (120, 160, 255)), box)
    b_same_tint = face_look(_pattern(2, (255, 200, 160)), box)
    assert not different_people(a, a_later)  # brighter: the same person
    assert different_people(a, b)
    assert not different_people(a, b_same_tint)  # unlike, but not in colour: kept together
    assert not different_people(a, None) and face_look(_pattern(1, (9, 9, 9)), box) is not None
    assert face_look(_pattern(1, (9, 9, 9)), (10.0, 10.0, 11.0, 40.0)) is None  # no area


def test_two_people_filmed_in_turn_at_one_place_are_two_tracks() -> None:
    """An interview cut between two people framed alike: the box overlaps, the
    face does not. They were one person, their scores averaged (one
    manipulated face no longer flagged the video)."""
    box = (0.0, 0.0, 64.0, 64.0)
    a = face_look(_pattern(1, (255, 200, 160)), box)
    b = face_look(_pattern(2, (120, 160, 255)), box)
    frames = [[det(10, 10)] for _ in range(16)]
    looks = [[a] for _ in range(8)] + [[b] for _ in range(8)]
    times = [0.5 * f for f in range(16)]  # samples half a second apart
    assert [t.frames for t in all_tracks(frames, 0.25, looks, times)] == [
        tuple(range(8)),
        tuple(range(8, 16)),
    ]
    assert len(link_tracks(frames, 0.25, 0.15)) == 1  # without looks: one track, as before
    # Samples seconds apart: one person may change as much (a turned head,
    # other light), so the look does not split them.
    sparse = [5.0 * f for f in range(16)]
    assert len(all_tracks(frames, 0.25, looks, sparse)) == 1


def test_a_face_back_at_its_place_after_a_long_absence_starts_another_track() -> None:
    assert max_track_gap(32) == 8 and max_track_gap(4) == 3
    frames: list[list[Detection]] = [[det(10, 10)] for _ in range(4)]
    frames += [[] for _ in range(16)] + [[det(10, 10)] for _ in range(12)]
    assert [t.frames for t in all_tracks(frames, 0.25)] == [
        (0, 1, 2, 3),
        tuple(range(20, 32)),
    ]
    # Missed in 8 samples in a row (motion blur, a turned head): the same track.
    missed = [list(dets) for dets in frames]
    missed[12:20] = [[det(10, 10)] for _ in range(8)]
    assert [t.frames for t in all_tracks(missed, 0.25)] == [(0, 1, 2, 3, *range(12, 32))]
    # Back after longer but surely the same face (the looks match): continued.
    box = (0.0, 0.0, 64.0, 64.0)
    a = face_look(_pattern(1, (255, 200, 160)), box)
    looks = [[a] if dets else [] for dets in frames]
    assert [t.frames for t in all_tracks(frames, 0.25, looks)] == [(0, 1, 2, 3, *range(20, 32))]


def test_on_a_short_clip_a_face_seen_every_fourth_sample_is_one_person() -> None:
    """The gap counts samples unseen: 3 in a row at least, so a second face
    BlazeFace catches every fourth of 12 samples stays one person, as before
    the gap limit, and is scored."""
    frames: list[list[Detection]] = [[det(10, 10)] for _ in range(12)]
    for f in (1, 5, 9):
        frames[f].append(det(300, 10))
    tracks = link_tracks(frames, 0.25, 0.15)
    assert [t.frames for t in tracks] == [tuple(range(12)), (1, 5, 9)]


def test_one_off_false_positive_is_dropped() -> None:
    frames = [[det(10, 10)] for _ in range(10)]
    frames[4].append(det(400, 400))
    tracks = link_tracks(frames, 0.25, 0.15)
    assert len(tracks) == 1


def test_single_image_face_is_kept() -> None:
    assert len(link_tracks([[det(10, 10)]], 0.25, 0.15)) == 1


def test_when_every_track_is_short_all_are_kept() -> None:
    # A long video sampled sparsely: faces move between samples.
    frames = [[det(100 * i, 10)] for i in range(6)]
    assert len(link_tracks(frames, 0.25, 0.5)) == 6


def test_when_every_track_is_short_a_stray_box_does_not_join_the_face_seen_most() -> None:
    # 32 sampled frames need 5 per track; the subject is seen in 4 of them and
    # a poster is detected once: only the subject is a person.
    frames: list[list[Detection]] = [[] for _ in range(32)]
    for f in (3, 9, 15, 21):
        frames[f].append(det(10, 10))
    frames[27].append(det(600, 300))
    tracks = link_tracks(frames, 0.25, 0.15)
    assert len(tracks) == 1 and tracks[0].frames == (3, 9, 15, 21)


def test_when_every_track_is_short_the_pieces_of_a_moving_face_are_all_kept() -> None:
    # A face seen in 10 of 32 frames that sparse sampling broke into pieces
    # of 4, 3 and 2 frames, and a one-frame stray box: the pieces stay.
    frames: list[list[Detection]] = [[] for _ in range(32)]
    for start, x in ((0, 10), (10, 200), (20, 400)):
        for k in range({10: 3, 200: 4, 400: 2}[x]):
            frames[start + k].append(det(x, 10))
    frames[30].append(det(600, 300))
    tracks = link_tracks(frames, 0.25, 0.5)
    assert sorted(len(t.detections) for t in tracks) == [2, 3, 4]


def test_every_face_of_an_image_is_a_person() -> None:
    assert len(link_tracks([[det(10, 10), det(200, 10), det(400, 10)]], 0.25, 0.15)) == 3


def test_square_crop_is_centred_with_margin() -> None:
    frame = np.zeros((400, 400, 3), np.uint8)
    frame[150:250, 150:250] = 200  # the "face"
    crop = crop_face(frame, (150, 150, 250, 250), CropPolicy("square", 0.5), 100)
    assert crop.shape == (100, 100, 3)
    # A 100 px face with 50 px margins each side fills the middle half.
    assert crop[30:70, 30:70].mean() == pytest.approx(200, abs=2)
    assert crop[:20].mean() < 5 and crop[-20:].mean() < 5


def test_square_crop_at_frame_edge_is_padded_black() -> None:
    frame = np.full((100, 100, 3), 255, np.uint8)
    crop = crop_face(frame, (60, 0, 100, 60), CropPolicy("square", 0.0), 60)
    assert crop.shape == (60, 60, 3)
    assert crop[:, :5].mean() < 5 or crop[:, -5:].mean() < 5  # beyond the frame is black


def test_isotropic_crop_keeps_aspect_and_pads() -> None:
    frame = np.full((300, 300, 3), 255, np.uint8)
    crop = crop_face(frame, (100, 50, 160, 170), CropPolicy("isotropic", 0.0), 120)
    assert crop.shape == (120, 120, 3)
    # 60x120 region -> 60x120 after resize, centred: black bands left and right.
    assert crop[:, :25].max() == 0 and crop[:, -25:].max() == 0
    assert crop[:, 35:85].min() == 255


def test_unknown_crop_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown crop policy"):
        CropPolicy("stretch", 0.1)  # type: ignore[arg-type]


def test_shift_moves_the_crop_up_by_box_heights_and_negative_margin_tightens() -> None:
    frame = np.zeros((400, 400, 3), np.uint8)
    box = (150.0, 150.0, 250.0, 250.0)
    assert crop_region(frame.shape, box, CropPolicy("square", 0.0, -0.2)) == (150, 130, 250, 230)
    assert crop_region(frame.shape, box, CropPolicy("square", -0.1)) == (160, 160, 240, 240)
    frame[130:140, 150:250] = 255  # a band just above the box
    crop = crop_face(frame, box, CropPolicy("square", 0.0, -0.2), 100)
    assert crop[:10].mean() > 250 and crop[10:].max() == 0


@pytest.mark.parametrize(
    "policy", [CropPolicy("square", -0.3, -0.2), CropPolicy("isotropic", -0.4, 0.1)]
)
@pytest.mark.parametrize("box", [(100.0, 0.0, 160.0, 60.0), (100.0, 340.0, 160.0, 400.0)])
def test_a_crop_at_the_frame_edge_holds_the_face_not_another_part_of_the_frame(
    policy: CropPolicy, box: tuple[float, float, float, float]
) -> None:
    """Shifted and tightened at the top or bottom edge, the region's far end
    went negative and numpy sliced from the other side of the frame (or an
    empty region gave a black crop, which was scored)."""
    frame = np.zeros((400, 400, 3), np.uint8)
    frame[int(box[1]) : int(box[3]), int(box[0]) : int(box[2])] = 200  # the face
    x0, y0, x1, y1 = crop_region(frame.shape, box, policy)
    if policy.kind == "isotropic":
        assert 0 <= x0 < x1 <= 400 and 0 <= y0 < y1 <= 400
    crop = crop_face(frame, box, policy, 32)
    assert (crop == 200).mean() > 0.3


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("square:0.05:-0.06", CropPolicy("square", 0.05, -0.06)),
        ("isotropic:0.3333", CropPolicy("isotropic", 0.3333)),
    ],
)
def test_crop_policy_parses_from_the_command_line(text: str, policy: CropPolicy) -> None:
    assert CropPolicy.parse(text) == policy
    assert CropPolicy.from_dict(policy.to_dict()) == policy


@pytest.mark.parametrize(
    "text",
    [
        "square",
        "square:x",
        "square:0.1:0.2:0.3",
        "oval:0.1",
        "square:-0.9",
        "square:0.1:3",
        "square:-0.3:-0.5",  # off the face: shift past 0.5 + margin
        "isotropic:0:0.6",
    ],
)
def test_malformed_crop_policies_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"crop policy|margin|shift"):
        CropPolicy.parse(text)


def test_a_grown_box_is_clamped_inside_the_frame_at_both_ends() -> None:
    """An end past the far side used to stay negative (numpy then sliced
    from the other side of the frame) or beyond the start (an inverted box)."""
    from ensemble.crops import _grow

    assert _grow((10.0, -100.0, 50.0, -20.0), 0.0, 0.0, 400, 400) == (10, 0, 50, 0)
    assert _grow((10.0, 420.0, 50.0, 500.0), 0.0, 0.0, 400, 400) == (10, 400, 50, 400)
    assert _grow((-30.0, 10.0, 430.0, 50.0), 5.0, 5.0, 400, 400) == (0, 5, 400, 55)


def test_faces_left_out_are_those_beside_a_kept_person_not_pieces_of_one() -> None:
    frames: list[list[Detection]] = [[det(10, 10)] for _ in range(20)] + [[] for _ in range(9)]
    frames += [[det(10, 10)] for _ in range(3)]  # the same person back after a long gap
    frames[5].append(det(300, 10))
    frames[6].append(det(300, 10))  # someone beside them, in 2 of 32 samples
    frames[8].append(det(500, 300))  # a one-frame false positive
    every = all_tracks(frames, 0.25)
    kept = keep_tracks(every, len(frames), 0.15)
    assert [t.frames for t in kept] == [tuple(range(20))]
    assert faces_left_out(every, kept) == 1
