"""How a dataset's face crops are framed, measured in BlazeFace's terms.

    python -m bench.crop_framing --data ../shared/datasets/dfdc_faces --limit 400 \
        --json var/crop_framing.json

Each crop is put on a black border (``--pad`` of its side on every side, so
the face no longer fills the image, which the front model handles poorly),
BlazeFace runs on it, and the best detection's box is compared with the crop:
the crop's side in box widths and heights, and where the crop's centre lies
from the box's centre (in box widths and heights, y down). The medians give
the crop policy that makes analysis crops (cut around a BlazeFace box in a
video frame) framed like the training crops: a square crop of
``side_in_box_widths`` box widths, centred ``centre_dy`` box heights below the
box centre (``ensemble.crops.CropPolicy`` ``margin = (side - 1) / 2``,
``shift = centre_dy``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from ensemble.config import FaceConfig
from ensemble.faces import FaceDetector
from ensemble.training.data import (
    limit_balanced,
    load_samples,
    pad_crop,
    read_rgb,
    select,
)

BATCH = 32


def measure(data: Path, limit: int, pad: float, split: str, seed: int) -> dict[str, Any]:
    """The framing statistics of up to ``limit`` crops of ``split``."""
    samples = limit_balanced(select(load_samples(data), split), limit, seed)
    detector = FaceDetector.load(FaceConfig(), common.ROOT / "var" / "cache")
    rows: list[tuple[float, float, float, float]] = []
    missed = 0
    for start in range(0, len(samples), BATCH):
        images = [read_rgb(s.path) for s in samples[start : start + BATCH]]
        padded = [pad_crop(image, pad) for image in images]
        found = detector.detect([p[0] for p in padded])
        for image, (_, px, py), dets in zip(images, padded, found, strict=True):
            if not dets:
                missed += 1
                continue
            x0, y0, x1, y1 = dets[0].box
            x0, x1, y0, y1 = x0 - px, x1 - px, y0 - py, y1 - py
            bw, bh = x1 - x0, y1 - y0
            h, w = image.shape[:2]
            rows.append(
                (w / bw, h / bh, (w / 2 - (x0 + x1) / 2) / bw, (h / 2 - (y0 + y1) / 2) / bh)
            )
    table = np.asarray(rows, dtype=np.float64)
    names = ("side_in_box_widths", "side_in_box_heights", "centre_dx", "centre_dy")
    stats = {
        name: {
            "median": float(np.median(table[:, i])),
            "p25": float(np.percentile(table[:, i], 25)),
            "p75": float(np.percentile(table[:, i], 75)),
        }
        for i, name in enumerate(names)
    }
    side = stats["side_in_box_widths"]["median"]
    return {
        "data": str(data),
        "split": split,
        "crops": len(samples),
        "detected": len(rows),
        "missed": missed,
        "pad": pad,
        **stats,
        "policy": {
            "kind": "square",
            "margin": round((side - 1) / 2, 3),
            "shift": round(stats["centre_dy"]["median"], 3),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    common.add_dataset(parser, split="train", limit=400)
    parser.add_argument("--pad", type=float, default=0.25, help="black border, share of the side")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = measure(args.data, args.limit, args.pad, args.split, args.seed)
    print(json.dumps(result, indent=2))
    common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
