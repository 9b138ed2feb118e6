"""Do the Grad-CAM maps point at what was manipulated? Measured on fakes whose original is known.

    python -m bench.cam_localisation --data ../shared/datasets/dfdc_faces --split val \
        --limit 200 --members resnet50,effnet_autoatt_b4 \
        --layer effnet_autoatt_b4=efficientnet._bn1 --json var/eval/cam_localisation.json

A dfdc_faces fake and its original are mostly the same frame of the same
scene, so where the two differ structurally (the SSIM difference region of
``ensemble.training.ssim_blackout.manipulated_region``, the one the B7
member's blackout uses) is where the face was manipulated. For each fake
whose region covers between ``MIN_REGION`` and ``MAX_REGION`` of the crop,
each member's Grad-CAM map of its fake-logit (the shipped weights, PyTorch,
fp32, the crop as is) is compared with that region:

- ``pixel_auc``: how well the map's values rank the region's pixels above the
  others (0.5: no better than chance; ties count half);
- ``lift``: the share of the map's heat inside the region over the share of
  the crop the region covers (1: spread evenly; higher is better);
- ``pointing``: whether the map's hottest pixel lies in the region.

The same figures for a centred Gaussian (``centre_prior``, sigma a quarter of
the crop) say how much a map gains by lighting up the middle of the face,
where most manipulations are. A member is measured at its registry's
Grad-CAM layer and at every ``--layer MEMBER=DOTTED`` named for it, so a
change of target layer can be judged on the same fakes; a member with an
attention map (B4) is measured on that map too (``@ attention``).

The region is the difference from one real frame: it also holds compression
and lighting differences, and misses manipulations too subtle for SSIM. The
figures compare maps and layers on the same fakes; they are not an absolute
measure of an explanation's truth.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from bench import common
from ensemble.media import RGBImage
from ensemble.training.data import Sample, load_samples, read_rgb, resize_to
from ensemble.training.data import select as select_split

BATCH = 8
MEMBERS = ["resnet50", "effnet_autoatt_b4"]
# The region's share of the crop: below, too little differs to judge a map
# by; above, the pair is not the same frame.
MIN_REGION = 0.005
MAX_REGION = 0.8
CENTRE_SIGMA = 0.25

FloatMap = npt.NDArray[np.float32]


def pixel_auc(heat: npt.ArrayLike, region: npt.ArrayLike) -> float | None:
    """Mann-Whitney AUC of ``heat`` values inside ``region`` (nonzero) against
    outside, ties counted half; ``None`` when either side is empty."""
    s = np.asarray(heat, np.float64).ravel()
    y = np.asarray(region).ravel() > 0
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # The average rank (1-based) of each distinct value.
    ends = np.cumsum(counts)
    average = ends - (counts - 1) / 2.0
    ranks = average[inverse]
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def lift(heat: npt.ArrayLike, region: npt.ArrayLike) -> float | None:
    """The share of ``heat`` inside ``region`` over the region's share of the
    area; ``None`` for an empty region or a map with no heat."""
    h = np.asarray(heat, np.float64)
    r = np.asarray(region) > 0
    total = h.sum()
    if total <= 0 or not r.any():
        return None
    return float(h[r].sum() / total / r.mean())


def pointing(heat: npt.ArrayLike, region: npt.ArrayLike) -> bool:
    """Whether the hottest pixel of ``heat`` is in ``region``."""
    h = np.asarray(heat)
    y, x = np.unravel_index(int(np.argmax(h)), h.shape)
    return bool(np.asarray(region)[y, x] > 0)


def centre_prior(size: int, sigma: float = CENTRE_SIGMA) -> FloatMap:
    """A centred isotropic Gaussian over a ``size`` square, peak 1."""
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    d2 = ((yy - c) ** 2 + (xx - c) ** 2) / (sigma * size) ** 2
    return np.exp(-0.5 * d2).astype(np.float32)


def region_at(region: npt.NDArray[np.floating], size: int) -> npt.NDArray[np.uint8]:
    """``region`` resampled to a ``size`` square (area-weighted, then half-covered pixels)."""
    if region.shape[:2] == (size, size):
        return (region > 0).astype(np.uint8)
    small = cv2.resize(region.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return (small >= 0.5).astype(np.uint8)


@dataclass(frozen=True)
class Pair:
    fake: Path
    original: Path
    region: npt.NDArray[np.float32]  # at the fake's own size


def pairs_of(samples: list[Sample], limit: int) -> tuple[list[Pair], dict[str, int]]:
    """Up to ``limit`` fakes with an original and a usable region, spread evenly
    over the sorted list, and how many were passed over and why."""
    from ensemble.training.ssim_blackout import manipulated_region

    fakes = sorted(
        (s for s in samples if s.label == 1 and s.original is not None and s.original.is_file()),
        key=lambda s: str(s.path),
    )
    skipped = {"region_too_small": 0, "region_too_large": 0}
    out: list[Pair] = []
    if not fakes:
        return out, skipped
    # Evenly spaced indices, then the rest in order, until ``limit`` are kept.
    step = max(1, len(fakes) // max(1, limit))
    order = list(range(0, len(fakes), step)) + [i for i in range(len(fakes)) if i % step]
    for i in order:
        if len(out) >= limit:
            break
        s = fakes[i]
        assert s.original is not None
        region = manipulated_region(read_rgb(s.path), read_rgb(s.original))
        share = float(region.mean())
        if share < MIN_REGION:
            skipped["region_too_small"] += 1
        elif share > MAX_REGION:
            skipped["region_too_large"] += 1
        else:
            out.append(Pair(s.path, s.original, region))
    return out, skipped


def scores_of(maps: list[FloatMap], regions: list[npt.NDArray[np.uint8]]) -> dict[str, Any]:
    """Mean and median pixel AUC and lift, and the pointing rate, over the maps."""
    aucs = [a for m, r in zip(maps, regions, strict=True) if (a := pixel_auc(m, r)) is not None]
    lifts = [v for m, r in zip(maps, regions, strict=True) if (v := lift(m, r)) is not None]
    points = [pointing(m, r) for m, r in zip(maps, regions, strict=True)]
    return {
        "pixel_auc_mean": round(float(np.mean(aucs)), 4) if aucs else None,
        "pixel_auc_median": round(float(np.median(aucs)), 4) if aucs else None,
        "lift_mean": round(float(np.mean(lifts)), 3) if lifts else None,
        "lift_median": round(float(np.median(lifts)), 3) if lifts else None,
        "pointing": round(float(np.mean(points)), 3) if points else None,
        "maps": len(maps),
        "maps_without_heat": len(maps) - len(lifts),
    }


ATTENTION = "attention"


def layer_maps(
    name: str, layer: str, weights: Path, crops_of: dict[int, list[RGBImage]]
) -> tuple[int, list[FloatMap], float]:
    """The member's Grad-CAM maps at ``layer`` (shipped weights, PyTorch,
    fp32), or its own attention map for ``layer`` ``"attention"``."""
    from ensemble.members import load_member
    from ensemble.registry import REGISTRY, Registry
    from explain.attention import attention_maps
    from explain.gradcam import gradcam_maps

    registry = Registry()
    spec = REGISTRY.get(name)
    if layer != ATTENTION:
        spec = replace(spec, gradcam_layer=layer)
    registry.register(spec)
    member = load_member(name, weights, registry=registry, backend="torch", precision="fp32")
    crops = crops_of.get(member.input_size)
    if crops is None:
        raise SystemExit(f"no crops prepared at {member.input_size} px for {name}")
    started = time.perf_counter()
    if layer == ATTENTION:
        maps = attention_maps(member, crops, BATCH)
    else:
        maps = gradcam_maps(member, crops, BATCH)
    return member.input_size, maps, time.perf_counter() - started


def parse_layers(items: list[str]) -> dict[str, list[str]]:
    """``MEMBER=DOTTED`` options, grouped by member."""
    out: dict[str, list[str]] = {}
    for item in items:
        member, sep, layer = item.partition("=")
        if not sep or not member.strip() or not layer.strip():
            raise SystemExit(f"--layer {item!r} is not MEMBER=DOTTED.PATH")
        out.setdefault(member.strip(), []).append(layer.strip())
    return out


def main(argv: list[str] | None = None) -> int:
    import ensemble.members  # noqa: F401 - registers the real members
    from ensemble.registry import REGISTRY

    parser = common.parser(__doc__)
    common.add_dataset(parser, split="val", limit=200)
    parser.add_argument("--members", default=",".join(MEMBERS), help="comma-separated detectors")
    parser.add_argument("--weights", type=Path, default=common.ROOT / "weights")
    parser.add_argument(
        "--layer",
        action="append",
        default=[],
        help="MEMBER=DOTTED: also measure this Grad-CAM layer (repeatable)",
    )
    args = parser.parse_args(argv)
    machine = common.cpu_snapshot()
    extra = parse_layers(args.layer)
    members = common.names(args.members)
    if unknown := sorted(set(extra) - set(members)):
        raise SystemExit(f"--layer names members not measured: {', '.join(unknown)}")
    pairs, skipped = pairs_of(select_split(load_samples(args.data), args.split), args.limit)
    if not pairs:
        raise SystemExit(f"no fake in {args.data} ({args.split}) has an original to compare with")
    print(f"{len(pairs)} fakes with a region ({skipped})", flush=True)
    sizes = sorted({REGISTRY.get(m).input_size for m in members} | {224})
    images = [read_rgb(p.fake) for p in pairs]
    crops_of = {size: [resize_to(im, None, size)[0] for im in images] for size in sizes}
    report: dict[str, Any] = {}
    for size in sizes:
        regions = [region_at(p.region, size) for p in pairs]
        prior = centre_prior(size)
        report[f"centre_prior@{size}"] = scores_of([prior] * len(pairs), regions)
    rows: list[tuple[str, dict[str, Any]]] = []
    for name in members:
        spec = REGISTRY.get(name)
        layers = [spec.gradcam_layer, *extra.get(name, [])]
        if spec.has_attention:
            layers.append(ATTENTION)
        for layer in layers:
            size, maps, seconds = layer_maps(name, layer, args.weights, crops_of)
            regions = [region_at(p.region, size) for p in pairs]
            scores = scores_of(maps, regions)
            scores.update(input_size=size, seconds=round(seconds, 1))
            rows.append((f"{name} @ {layer}", scores))
            print(
                f"{name} @ {layer}: pixel AUC {scores['pixel_auc_mean']} "
                f"(median {scores['pixel_auc_median']}), lift {scores['lift_mean']} "
                f"(median {scores['lift_median']}), pointing {scores['pointing']}, "
                f"{seconds:.0f} s",
                flush=True,
            )
    for key, scores in report.items():
        print(
            f"{key}: pixel AUC {scores['pixel_auc_mean']}, lift {scores['lift_mean']}, "
            f"pointing {scores['pointing']}"
        )
    shares = [float(p.region.mean()) for p in pairs]
    common.write_json(
        args.json,
        {
            "data": str(args.data),
            "split": args.split,
            "fakes": len(pairs),
            "skipped": skipped,
            "region_share_median": round(float(np.median(shares)), 4),
            "maps": dict(rows),
            "baselines": report,
            "machine_before": machine,
            "machine_after": common.cpu_snapshot(),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
