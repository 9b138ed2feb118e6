"""How well a face's look tells one person from another across a cut.

    python -m bench.track_looks --json var/eval/track_looks.json

Samples ``--frames`` frames of each video in ``--videos`` (the development
videos by default), finds the faces with BlazeFace and measures, with
``ensemble.tracks.face_look``, the grey-pattern correlation and the colour
distance (Bhattacharyya) between each video's successive faces (one person,
what a track must keep together) and between the last face of one video and
the first of every other (two people at a cut, what a track must split).
It prints each side's range and how many pairs ``different_people`` (the
thresholds ``LOOK_MIN_CORR`` and ``LOOK_MAX_COLOUR``) calls two people: on
one person's pairs that is a track split in error, on a cut's pairs the
split it should make. Only the first (surest) face of each frame is used.
The samples' spacing is reported too: the look splits people only between
samples at most ``LOOK_MAX_SECONDS`` apart.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import cv2

from bench import common


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--videos", type=Path, default=common.VIDEOS, help="folder of videos")
    parser.add_argument("--frames", type=int, default=32, help="frames sampled per video")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "trusttrace")
    args = parser.parse_args(argv)

    from ensemble.config import FaceConfig
    from ensemble.faces import FaceDetector
    from ensemble.media import MediaLimits, load_media
    from ensemble.tracks import (
        LOOK_MAX_COLOUR,
        LOOK_MAX_SECONDS,
        LOOK_MIN_CORR,
        Look,
        different_people,
        face_look,
    )

    detector = FaceDetector.load(FaceConfig(), args.cache)
    looks: dict[str, list[Look]] = {}
    steps: dict[str, float] = {}  # seconds between successive samples
    for video in sorted(args.videos.glob("*.mp4")):
        media = load_media(video, MediaLimits(), args.frames)
        times = [f.time_s for f in media.frames]
        steps[video.name] = round((times[-1] - times[0]) / max(len(times) - 1, 1), 3)
        found = detector.detect([f.image for f in media.frames])
        faces = [
            face_look(f.image, d[0].box) for f, d in zip(media.frames, found, strict=True) if d
        ]
        looks[video.name] = [look for look in faces if look is not None]

    def pair(a: Look, b: Look) -> dict[str, Any]:
        colour = cv2.compareHist(a.colour, b.colour, cv2.HISTCMP_BHATTACHARYYA)
        return {
            "corr": round(float(a.grey @ b.grey), 3),
            "colour": round(float(colour), 3),
            "two_people": different_people(a, b),
        }

    same = {name: [pair(a, b) for a, b in itertools.pairwise(v)] for name, v in looks.items()}
    cuts = [
        {"from": a, "to": b, **pair(looks[a][-1], looks[b][0])}
        for a in looks
        for b in looks
        if a != b and looks[a] and looks[b]
    ]
    one_person = [p for pairs in same.values() for p in pairs]
    report = {
        "frames": args.frames,
        "thresholds": {"min_corr": LOOK_MIN_CORR, "max_colour": LOOK_MAX_COLOUR},
        "faces": {name: len(v) for name, v in looks.items()},
        "seconds_between_samples": steps,
        "one_person": {
            "pairs": len(one_person),
            "corr_min": min((p["corr"] for p in one_person), default=None),
            "colour_max": max((p["colour"] for p in one_person), default=None),
            "split_in_error": sum(p["two_people"] for p in one_person),
        },
        "cuts": {
            "pairs": len(cuts),
            "corr_max": max((p["corr"] for p in cuts), default=None),
            "colour_min": min((p["colour"] for p in cuts), default=None),
            "split": sum(p["two_people"] for p in cuts),
        },
        "cut_pairs": cuts,
        "machine": common.cpu_snapshot(1.0),
    }
    common.write_json(args.json, report)
    o, c = report["one_person"], report["cuts"]
    print(
        f"one person: {o['pairs']} successive pairs, corr >= {o['corr_min']}, colour <= "
        f"{o['colour_max']}, split in error {o['split_in_error']}\n"
        f"cuts: {c['pairs']} pairs, corr <= {c['corr_max']}, colour >= {c['colour_min']}, "
        f"split {c['split']} of {c['pairs']}\n"
        f"samples {min(steps.values(), default=0)}-{max(steps.values(), default=0)} s apart "
        f"(the look splits people only at most {LOOK_MAX_SECONDS} s apart)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
