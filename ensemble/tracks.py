"""Linking faces across sampled frames into person tracks.

A video with several people is scored per person, so one manipulated face is
not averaged away by genuine ones around it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from ensemble.blazeface import Detection, box_iou
from ensemble.media import RGBImage

# Two faces at one place in successive samples are told apart as different
# people (a cut between shots of an interview) only when they differ both in
# shape and in colour: the grey pattern of the face correlates below
# LOOK_MIN_CORR and its colour histograms lie further apart than
# LOOK_MAX_COLOUR (Bhattacharyya). `python -m bench.track_looks` on the four
# development videos at 32 samples: one person's 124 successive faces
# correlate at 0.639 or more and lie at most 0.314 apart (none split); of
# the 12 cuts between two of those videos' people, 9 are split (the rest
# correlate up to 0.594 and merge as before). Conservative by design: a
# split in error makes two people of one.
LOOK_MIN_CORR = 0.5
LOOK_MAX_COLOUR = 0.35
# The look tells people apart only between samples at most this far apart:
# the measurements above are of samples 0.32-0.63 s apart, and one person
# changes more between samples seconds apart (a turned head, other light),
# while a cut changes the face at once. The same bench at 8 samples (1.4-2.8
# s apart) would split 2 of one person's 28 successive pairs, at 4 samples
# (3.3-6.5 s) 2 of 12.
LOOK_MAX_SECONDS = 1.0
# A face back after a long absence continues a person only when it looks like
# them this much (one person's faces, as above, 0.639 or more; the cuts' at
# most 0.594).
LOOK_SAME_CORR = 0.62
LOOK_SIDE = 24


@dataclass(frozen=True)
class Look:
    """What a face looks like, coarsely: its grey pattern (``LOOK_SIDE``
    pixels a side, zero mean, unit norm) and its HSV colour histogram."""

    grey: npt.NDArray[np.float32]
    colour: npt.NDArray[np.float32]


def face_look(image: RGBImage, box: tuple[float, float, float, float]) -> Look | None:
    """The look of the face in ``box`` of ``image`` (None for an empty box)."""
    h, w = image.shape[:2]
    x0, y0 = max(int(box[0]), 0), max(int(box[1]), 0)
    x1, y1 = min(math.ceil(box[2]), w), min(math.ceil(box[3]), h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    face = np.ascontiguousarray(image[y0:y1, x0:x1])
    small = cv2.resize(face, (LOOK_SIDE, LOOK_SIDE), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32).ravel()
    grey -= grey.mean()
    norm = float(np.linalg.norm(grey))
    grey = grey / norm if norm > 1e-6 else grey
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
    total = float(hist.sum())
    return Look(grey, (hist / total if total else hist).astype(np.float32))


def same_person(a: Look | None, b: Look | None) -> bool:
    """Whether two faces surely look alike (grey patterns correlating at
    ``LOOK_SAME_CORR`` or more): what lets a face continue a person unseen
    for longer than :func:`max_track_gap`."""
    return a is not None and b is not None and float(a.grey @ b.grey) >= LOOK_SAME_CORR


def different_people(a: Look | None, b: Look | None) -> bool:
    """Whether two faces are surely two people (see ``LOOK_MIN_CORR``)."""
    if a is None or b is None:
        return False
    corr = float(a.grey @ b.grey)
    colour = float(cv2.compareHist(a.colour, b.colour, cv2.HISTCMP_BHATTACHARYYA))
    return corr < LOOK_MIN_CORR and colour > LOOK_MAX_COLOUR


def max_track_gap(n_frames: int) -> int:
    """Samples in a row a track may go unseen and still continue: a quarter
    of them, at least 3. A face back at the same place after longer is
    another person as often as not (shots alternating between two people),
    so it continues the track only if it surely looks the same
    (:func:`same_person`)."""
    return max(3, math.ceil(0.25 * n_frames))


@dataclass(frozen=True)
class Track:
    """One person: the (sampled frame position, detection) pairs that form it."""

    id: int
    detections: tuple[tuple[int, Detection], ...]

    @property
    def frames(self) -> tuple[int, ...]:
        return tuple(f for f, _ in self.detections)


def link_tracks(
    per_frame: Sequence[Sequence[Detection]],
    iou_threshold: float,
    min_fraction: float,
    looks: Sequence[Sequence[Look | None]] | None = None,
    times: Sequence[float] | None = None,
) -> list[Track]:
    """The people of :func:`all_tracks`, without the stray detections
    (:func:`keep_tracks`)."""
    every = all_tracks(per_frame, iou_threshold, looks, times)
    return keep_tracks(every, len(per_frame), min_fraction)


def all_tracks(
    per_frame: Sequence[Sequence[Detection]],
    iou_threshold: float,
    looks: Sequence[Sequence[Look | None]] | None = None,
    times: Sequence[float] | None = None,
) -> list[Track]:
    """Greedy IoU linking: each detection joins the track whose latest box
    overlaps it most (at least ``iou_threshold``), best pairs first; the rest
    start new tracks. A track may skip frames where its face was missed, up
    to :func:`max_track_gap` in a row (more with ``looks`` that match,
    :func:`same_person`). With ``looks`` (one per detection) and the
    samples' ``times``, a face that is surely someone else
    (:func:`different_people`) at most ``LOOK_MAX_SECONDS`` after the
    track's last does not continue it, however well it overlaps: two people
    filmed at one place in turn used to become one person, their scores
    averaged.
    """
    gap = max_track_gap(len(per_frame))
    tracks: list[list[tuple[int, Detection]]] = []
    seen: list[Look | None] = []  # each track's latest look
    for f, detections in enumerate(per_frame):
        if not detections:
            continue
        here = looks[f] if looks is not None else [None] * len(detections)
        pairs: list[tuple[float, int, int]] = []
        if tracks:
            lasts = np.array([t[-1][1].box for t in tracks], dtype=np.float64)
            for d, det in enumerate(detections):
                ious = box_iou(np.asarray(det.box, dtype=np.float64), lasts)
                pairs += [
                    (float(v), t, d)
                    for t, v in enumerate(ious)
                    if v >= iou_threshold
                    and not (
                        times is not None
                        and times[f] - times[tracks[t][-1][0]] <= LOOK_MAX_SECONDS
                        and different_people(seen[t], here[d])
                    )
                    and (f - tracks[t][-1][0] - 1 <= gap or same_person(seen[t], here[d]))
                ]
        used_t: set[int] = set()
        used_d: set[int] = set()
        for _, t, d in sorted(pairs, reverse=True):
            if t in used_t or d in used_d:
                continue
            tracks[t].append((f, detections[d]))
            seen[t] = here[d] or seen[t]
            used_t.add(t)
            used_d.add(d)
        for d, det in enumerate(detections):
            if d not in used_d:
                tracks.append([(f, det)])
                seen.append(here[d])
    return [Track(i, tuple(t)) for i, t in enumerate(tracks)]


def keep_tracks(tracks: Sequence[Track], n_frames: int, min_fraction: float) -> list[Track]:
    """Tracks seen in fewer than ``min_fraction`` of the ``n_frames`` are
    dropped as stray detections; when that would drop every track, the
    tracks seen in two frames or more are kept (all of them when none is).
    Numbered again in order of appearance."""
    needed = max(1, math.ceil(min_fraction * n_frames))
    kept = [t for t in tracks if len(t.detections) >= needed]
    if not kept and tracks:
        # No face was seen often enough (a short clip, or a moving face that
        # sparse sampling broke into pieces): keep every piece seen in two
        # frames or more, but not the one-frame detections beside them (a
        # poster, a false positive). When every track is one frame (an
        # image, or faces that moved between every sample), all are kept.
        kept = [t for t in tracks if len(t.detections) >= 2] or list(tracks)
    kept = sorted(kept, key=lambda t: (t.detections[0][0], t.detections[0][1].box[0]))
    return [Track(i, t.detections) for i, t in enumerate(kept)]


def looks_of(
    images: Sequence[RGBImage], per_frame: Sequence[Sequence[Detection]]
) -> list[list[Look | None]]:
    """Each detection's :func:`face_look`, frame by frame (for :func:`all_tracks`)."""
    return [
        [face_look(image, d.box) for d in detections]
        for image, detections in zip(images, per_frame, strict=True)
    ]


def faces_left_out(every: Sequence[Track], kept: Sequence[Track]) -> int:
    """How many faces :func:`keep_tracks` left out that a result should
    mention: tracks seen in two sampled frames or more, in frames where a
    kept person was seen too (someone beside them, not a piece of a kept
    person seen apart from them, nor a one-frame false positive)."""
    kept_ids = {id(t.detections) for t in kept}  # keep_tracks reuses the tuples
    kept_frames = {f for t in kept for f in t.frames}
    return sum(
        1
        for t in every
        if len(t.detections) >= 2
        and id(t.detections) not in kept_ids
        and kept_frames.intersection(t.frames)
    )
