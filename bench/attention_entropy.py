"""Is the learned attention map of EfficientNetAutoAttB4 informative? Measured.

    python -m bench.attention_entropy --data ../shared/datasets/dfdc_faces --split val \
        --limit 512 --json var/eval/attention_entropy.json --grid var/eval/attention_grid.png

Runs the installed member's attention (blocks 0-9 and the 1x1 attention
convolution, ``explain.attention.attention_maps``) on the crops of a labelled
split and prints, per class and overall, the distribution of
``explain.attention.attention_spread``: the normalised entropy (1.0 = a uniform
map, 0.0 = a single pixel; a map near either end explains nothing) and the
share of the map in its top 10% of pixels (0.10 for a uniform map). ``--grid``
writes the first crops with their maps overlaid, to look at.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from bench import common
from ensemble.members import load_member
from ensemble.training.data import limit_balanced, load_samples, read_rgb, resize_to, select
from explain.attention import attention_maps, attention_spread

BATCH = 32


def _summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {
        "mean": float(a.mean()),
        "median": float(np.median(a)),
        "p5": float(np.percentile(a, 5)),
        "p95": float(np.percentile(a, 95)),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    common.add_member(parser, "effnet_autoatt_b4")
    common.add_dataset(parser, split="val", limit=512)
    parser.add_argument("--grid", type=Path, help="PNG of the first 16 crops with their maps")
    args = parser.parse_args(argv)

    member = load_member(args.member, args.weights, backend="torch")
    samples = limit_balanced(select(load_samples(args.data), args.split), args.limit, 0)
    size = member.input_size
    crops = [resize_to(read_rgb(s.path), None, size)[0] for s in samples]
    model = member.model
    import torch

    raws = []
    with torch.inference_mode():
        for start in range(0, len(crops), BATCH):
            x = member.to_tensor(crops[start : start + BATCH])
            raws.append(model.attention_map(x).float().cpu().numpy())  # type: ignore[operator]
    raw = np.concatenate(raws)
    spreads = [attention_spread(a[0]) for a in raw]
    result: dict[str, object] = {
        "member": args.member,
        "weights_sha256": member.weights_sha256,
        "data": str(args.data),
        "split": args.split,
        "n": len(samples),
        "map_shape": list(raw.shape[2:]),
    }
    for label, name in ((None, "all"), (0, "real"), (1, "fake")):
        picked = [s for s, smp in zip(spreads, samples, strict=True) if label in (None, smp.label)]
        result[name] = {key: _summary([p[key] for p in picked]) for key in picked[0]}
    print(json.dumps(result, indent=2))
    common.write_json(args.json, result)
    if args.grid:
        maps = attention_maps(member, crops[:16], BATCH, raw=raw[:16])
        tiles = []
        for crop, amap in zip(crops[:16], maps, strict=True):
            heat = cv2.applyColorMap((amap * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
            tiles.append(np.concatenate([crop, (0.5 * crop + 0.5 * heat).astype(np.uint8)], 0))
        rows = [np.concatenate(tiles[i : i + 8], 1) for i in range(0, len(tiles), 8)]
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(args.grid), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
