"""Memory of turning a transparent picture into the analysed RGB array.

    python -m bench.picture_memory --json var/picture_memory.json

Writes an RGBA PNG of ``--width`` x ``--height`` pixels (default 8000x5000,
the 40-megapixel picture limit; left half opaque, right half transparent),
then, each in a fresh process (``ru_maxrss`` is a process's peak), decodes
it and measures the peak resident memory over the decoded picture of:

- ``drop-alpha``: ``im.convert("RGB")`` to an array (what reading did before
  transparency was composited);
- ``composited``: ``ensemble.media._rgb_array`` (colours from the profile,
  then the picture pasted through its alpha onto white).

Memory is not shared between the processes; the CPU snapshot says what else
ran (it changes the seconds, not the bytes).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench import common

MODES = ("drop-alpha", "composited")


def measure(path: Path, mode: str) -> dict[str, float | str]:
    """Peak MiB over the decoded picture, and seconds, of one mode (run in
    the calling process: call it in a fresh one)."""
    from ensemble import media

    with Image.open(path) as im:
        im.load()
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        if mode == "drop-alpha":
            array = np.asarray(im.convert("RGB"), dtype=np.uint8)
        else:
            array = media._rgb_array(im)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert array.shape == (im.height, im.width, 3)
    return {
        "mode": mode,
        "peak_mib_over_decoded": round((peak - base) / 1024),
        "s": round(seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--width", type=int, default=8000)
    parser.add_argument("--height", type=int, default=5000)
    parser.add_argument("--one", choices=MODES, help="(internal) measure one mode here")
    parser.add_argument("--picture", type=Path, help="(internal) the picture --one reads")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.picture, args.one)))
        return 0
    snapshot = common.cpu_snapshot()
    with tempfile.TemporaryDirectory() as tmp:
        picture = Path(tmp) / "rgba.png"
        pixels = np.zeros((args.height, args.width, 4), np.uint8)
        pixels[..., 2] = 220
        pixels[:, : args.width // 2, 3] = 255
        Image.fromarray(pixels).save(picture, compress_level=1)
        del pixels
        rows = []
        for mode in MODES:
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.picture_memory",
                    "--one",
                    mode,
                    "--picture",
                    str(picture),
                ],
                capture_output=True,
                text=True,
                check=True,
                cwd=common.ROOT,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    report = {"width": args.width, "height": args.height, "rows": rows, "cpu": snapshot}
    common.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
