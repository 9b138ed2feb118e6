"""Does the reference get placed in time? Measured on the development videos.

    python -m bench.reference_offset --json var/bench/reference_offset.json

Cuts copies of the FaceForensics++ pair in ``../shared/media/videos`` (decoded
and encoded again with H.264, as a re-upload is) and asks
``explain.reference.reference_offset`` where each submission lies in its
reference, with the 32 frames an analysis samples. Prints, per pair, the
shift found (or "not placed" and why), the mean correlation at that shift
and at no shift, the shift expected, and the seconds it took (the
reference's every frame is decoded).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common
from ensemble.config import MediaLimits
from ensemble.media import gray_thumbnails, load_media
from explain.reference import SIGNATURE_SIDE, _normalised, reference_offset, signature

FAKE = "tranthuhoai3786_000_003.mp4"
REAL = "cyshih704_real.mp4"
OTHER = "tranthuhoai3786_009.mp4"
DFDC = "aaronchong888_abofeumbvv.mp4"
FRAMES = 32


def recode(
    src: Path, dst: Path, start_s: float, end_s: float | None = None, preset: str = "veryfast"
) -> Path:
    """``src`` from ``start_s`` to ``end_s`` (seconds from its first frame),
    decoded and encoded again (H.264, CRF 26, x264's ``preset``)."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), mode="w") as out:
        stream = inp.streams.video[0]
        o = out.add_stream("libx264", rate=stream.average_rate)
        o.width, o.height = stream.codec_context.width, stream.codec_context.height
        o.pix_fmt = "yuv420p"
        o.options = {"preset": preset, "crf": "26"}
        first = None
        for frame in inp.decode(stream):
            t = float(frame.pts * stream.time_base)
            first = t if first is None else first
            if t - first < start_s - 1e-6 or (end_s is not None and t - first > end_s + 1e-6):
                continue
            picture = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
            for packet in o.encode(picture):
                out.mux(packet)
        for packet in o.encode():
            out.mux(packet)
    return dst


def at_no_shift(submission: Path, reference: Path) -> float | None:
    """The mean correlation of the sampled frames with the reference's at the same times."""
    import numpy as np

    read = load_media(submission, MediaLimits(), FRAMES)
    thumbs = gray_thumbnails(reference, MediaLimits(), SIGNATURE_SIDE, 10**13)
    assert thumbs is not None
    times, refs = thumbs
    probes = np.stack([signature(f.image) for f in read.frames])
    similarity = _normalised(probes) @ _normalised(refs).T
    picks = [
        (i, int(np.argmin(np.abs(times - f.time_s))))
        for i, f in enumerate(read.frames)
        if f.time_s <= times[-1] + 1e-6
    ]
    if len(picks) < 4:
        return None
    return round(float(np.mean([similarity[i, j] for i, j in picks])), 4)


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--videos", type=Path, default=common.VIDEOS, help="development videos")
    args = parser.parse_args(argv)
    machine = common.cpu_snapshot()
    v = args.videos
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        fake_from_3 = recode(v / FAKE, tmp / "fake_from_3.mp4", 3.0)
        real_from_3 = recode(v / REAL, tmp / "real_from_3.mp4", 3.0)
        real_2_to_9 = recode(v / REAL, tmp / "real_2_to_9.mp4", 2.0, 9.0)
        pairs = [
            ("the FF++ fake, re-encoded from 3.0 s on", fake_from_3, v / REAL, 3.0),
            ("the FF++ fake as published", v / FAKE, v / REAL, 0.0),
            ("another person's FF++ original", v / OTHER, v / REAL, None),
            ("the real footage, re-encoded from 3.0 s on", real_from_3, v / REAL, 3.0),
            ("the real footage", v / REAL, real_from_3, -3.0),
            ("the real footage, 2.0-9.0 s, re-encoded", real_2_to_9, v / REAL, 2.0),
            ("the 1080p DFDC fake", v / DFDC, v / REAL, None),
        ]
        for label, submission, reference, expected in pairs:
            read = load_media(submission, MediaLimits(), FRAMES)
            started = time.perf_counter()
            found = reference_offset(
                reference,
                [f.time_s for f in read.frames],
                [f.image for f in read.frames],
                MediaLimits(),
            )
            seconds = time.perf_counter() - started
            row = {
                "submission": label,
                "reference": reference.name if reference.parent == v else "cut copy",
                "expected_s": expected,
                "found_s": round(found.seconds, 3) if found.aligned else None,
                "why": found.why,
                "correlation": found.score,
                "at_no_shift": at_no_shift(submission, reference),
                "seconds": round(seconds, 2),
            }
            rows.append(row)
            shift = f"{found.seconds:+.3f} s" if found.aligned else f"not placed ({found.why})"
            print(
                f"{label} | {row['reference']}: {shift}, correlation {found.score}, "
                f"at no shift {row['at_no_shift']}, expected {expected}, {seconds:.1f} s",
                flush=True,
            )
    common.write_json(
        args.json,
        {
            "frames": FRAMES,
            "pairs": rows,
            "machine_before": machine,
            "machine_after": common.cpu_snapshot(),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
