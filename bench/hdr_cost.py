"""What reading an HDR video costs over reading the same video as SDR.

    python -m bench.hdr_cost --json var/hdr_cost.json

Writes one 10-bit H.264 clip (``--width`` x ``--height``, default 3840x2160,
``--frames`` frames of a moving colour gradient) three times, identical but
for its colour tags: BT.709 (SDR, read as 8-bit RGB as always), HLG in
BT.2020 (an iPhone's HDR) and PQ in BT.2020 (HDR10). Then samples
``--sample`` frames of each with ``ensemble.media.load_media`` (what the
worker runs), ``--repeats`` times interleaved, and reports each tag's median
seconds and its peak resident memory over one read (the returned frames
included), each in a fresh process of its own (Linux). The HDR clips are
tone-mapped to SDR BT.709 (``ensemble.hdr``); the difference is what that
costs. The CPU snapshot says what else ran.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from bench import common

TAGS = {
    "bt709": (1, 1, 1),  # transfer, primaries, matrix
    "hlg-bt2020": (18, 9, 9),
    "pq-bt2020": (16, 9, 9),
}


def write_clip(
    path: Path, width: int, height: int, frames: int, tags: tuple[int, int, int]
) -> None:
    """A 10-bit 4:2:0 H.264 clip of a gradient that drifts, tagged ``tags``."""
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p10le"
    ctx = stream.codec_context
    ctx.color_trc, ctx.color_primaries, ctx.colorspace = tags
    ctx.color_range = 1
    ys, xs = np.mgrid[0:height, 0:width]
    for pts in range(frames):
        rgb = np.stack(
            [(xs + 8 * pts) % 256, (ys + 4 * pts) % 256, ((xs + ys) // 2) % 256], axis=-1
        ).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p10le")
        frame.pts = pts
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
    container.close()


def read_once(path: Path, sample: int) -> float:
    """Seconds of one ``load_media`` of ``sample`` frames."""
    from ensemble.config import MediaLimits
    from ensemble.media import load_media

    started = time.perf_counter()
    loaded = load_media(path, MediaLimits(), sample)
    seconds = time.perf_counter() - started
    assert len(loaded.frames) == sample, (path, len(loaded.frames))
    return seconds


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_mib(path: Path, sample: int) -> float:
    """Peak resident MiB of one read over the process's resident memory
    before it, the returned frames included (Linux: the peak is reset
    through ``/proc/self/clear_refs`` first, so what the imports took does
    not hide it)."""
    import ensemble.media  # noqa: F401  (imported before the baseline)

    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmRSS")
    read_once(path, sample)
    return (_status_kib("VmHWM") - base) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--width", type=int, default=3840)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--sample", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", type=Path, help="(internal) peak memory of reading this clip")
    args = parser.parse_args(argv)
    if args.one:
        print(round(peak_mib(args.one, args.sample), 1))
        return 0
    snapshot = common.cpu_snapshot()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clips = {}
        for name, tags in TAGS.items():
            clips[name] = Path(tmp) / f"{name}.mp4"
            write_clip(clips[name], args.width, args.height, args.frames, tags)
        seconds: dict[str, list[float]] = {name: [] for name in TAGS}
        peaks: dict[str, float] = dict.fromkeys(TAGS, 0.0)
        for name, clip in clips.items():
            out = subprocess.run(
                [
                    *(sys.executable, "-m", "bench.hdr_cost"),
                    *("--one", str(clip), "--sample", str(args.sample)),
                ],
                capture_output=True,
                text=True,
                check=True,
                cwd=common.ROOT,
            )
            peaks[name] = float(out.stdout.strip().splitlines()[-1])
        for _ in range(args.repeats):
            for name, clip in clips.items():
                seconds[name].append(read_once(clip, args.sample))
        base = statistics.median(seconds["bt709"])
        for name in TAGS:
            median = statistics.median(seconds[name])
            rows.append(
                {
                    "tags": name,
                    "median_s": round(median, 3),
                    "s_per_frame_over_sdr": round((median - base) / args.sample, 3),
                    "peak_rss_mib": round(peaks[name], 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    report = {
        "width": args.width,
        "height": args.height,
        "sample": args.sample,
        "repeats": args.repeats,
        "rows": rows,
        "cpu": snapshot,
    }
    common.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
