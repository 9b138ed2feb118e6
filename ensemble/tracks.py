"""Linking faces across sampled frames into person tracks.

A video with several people is scored per person, so one manipulated face is
not averaged away by genuine ones around it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ensemble.blazeface import Detection, box_iou


@dataclass(frozen=True)
class Track:
    """One person: the (sampled frame position, detection) pairs that form it."""

    id: int
    detections: tuple[tuple[int, Detection], ...]

    @property
    def frames(self) -> tuple[int, ...]:
        return tuple(f for f, _ in self.detections)


def link_tracks(
    per_frame: Sequence[Sequence[Detection]], iou_threshold: float, min_fraction: float
) -> list[Track]:
    """Greedy IoU linking: each detection joins the track whose latest box
    overlaps it most (at least ``iou_threshold``), best pairs first; the rest
    start new tracks. A track may skip frames where its face was missed.

    Tracks seen in fewer than ``min_fraction`` of the frames are dropped as
    stray detections; when that would drop every track, the tracks seen in
    two frames or more are kept (all of them when none is).
    """
    tracks: list[list[tuple[int, Detection]]] = []
    for f, detections in enumerate(per_frame):
        if not detections:
            continue
        pairs: list[tuple[float, int, int]] = []
        if tracks:
            lasts = np.array([t[-1][1].box for t in tracks], dtype=np.float64)
            for d, det in enumerate(detections):
                ious = box_iou(np.asarray(det.box, dtype=np.float64), lasts)
                pairs += [(float(v), t, d) for t, v in enumerate(ious) if v >= iou_threshold]
        used_t: set[int] = set()
        used_d: set[int] = set()
        for _, t, d in sorted(pairs, reverse=True):
            if t in used_t or d in used_d:
                continue
            tracks[t].append((f, detections[d]))
            used_t.add(t)
            used_d.add(d)
        tracks += [[(f, det)] for d, det in enumerate(detections) if d not in used_d]

    needed = max(1, math.ceil(min_fraction * len(per_frame)))
    kept = [t for t in tracks if len(t) >= needed]
    if not kept and tracks:
        # No face was seen often enough (a short clip, or a moving face that
        # sparse sampling broke into pieces): keep every piece seen in two
        # frames or more, but not the one-frame detections beside them (a
        # poster, a false positive). When every track is one frame (an
        # image, or faces that moved between every sample), all are kept.
        kept = [t for t in tracks if len(t) >= 2] or tracks
    kept.sort(key=lambda t: (t[0][0], t[0][1].box[0]))
    return [Track(i, tuple(t)) for i, t in enumerate(kept)]
