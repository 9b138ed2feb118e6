"""Would scoring each face at a second framing (zoomed in) make the ensemble better? Measured.

    python -m bench.crop_tta --data ../shared/datasets/dfdc_faces --split val \
        --members resnet50,effnet_autoatt_b4 --logits var/eval/crop_tta.npz \
        --json var/eval/crop_tta.json

``bench.flip_tta`` measured mirroring; this measures framing. Each member
named scores every crop of the split in four views: as is, mirrored, zoomed
in (the central ``--zoom`` share of the crop, resized back to the member's
input) and zoomed in and mirrored. The members were trained with small zooms
(``ensemble.training.augment``: scale 0.92-1.08), so the zoomed view is a face
they know, framed a little tighter, as a detector box a few pixels smaller
frames it. A view set's logit is the mean of its views' logits.

The logits of every view are kept in ``--logits`` (an ``.npz`` keyed
``member/view``, with the crops' paths), and a later run with the same file
scores only the views it lacks, so a slow member can be added later. The
report gives each member's AUC and log loss per view set (installed
temperature and bias), and the cross-validated weighted ensemble
(``calibrate_ensemble``'s fit, 5 folds by source video) for each arrangement
of view sets over the members the file holds: the shipped one (B4 as is and
mirrored, the others as is) first. The arrangements are chosen on the same
crops they are scored on (the ensemble weights are cross-validated, the
choice of views is not), so a gain this small needs another split to confirm.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from ensemble.evaluation import log_loss, roc_auc
from ensemble.media import RGBImage
from ensemble.members import load_member
from ensemble.scoring import calibrate
from ensemble.training.data import labels_array, limit_balanced, load_samples, read_rgb, resize_to
from ensemble.training.data import select as select_split
from ensemble.training.ensemble_fit import ScoreTable, fit_ensemble

BATCH = 16
MEMBERS = ["resnet50", "effnet_autoatt_b4", "effnet_b7"]
VIEWS = ("as_is", "mirror", "zoom", "zoom_mirror")
# View sets a member's logit can be the mean of.
VIEW_SETS = {
    "as_is": ("as_is",),
    "mirrored": ("as_is", "mirror"),
    "zoomed": ("as_is", "zoom"),
    "four": VIEWS,
}
# What analyses run now (TRUSTTRACE_MIRROR's default): the baseline arrangement.
SHIPPED = {"resnet50": "as_is", "effnet_autoatt_b4": "mirrored", "effnet_b7": "as_is"}


def zoom_in(image: RGBImage, share: float) -> RGBImage:
    """The central ``share`` of ``image`` (both sides), as a new array."""
    if not 0.5 <= share <= 1.0:
        raise ValueError(f"zoom share {share} is outside 0.5-1.0")
    h, w = image.shape[:2]
    ch, cw = max(1, round(h * share)), max(1, round(w * share))
    top, left = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(image[top : top + ch, left : left + cw])


def views_of(image: RGBImage, size: int, share: float) -> dict[str, RGBImage]:
    """The four views of one crop at the member's input ``size``."""
    plain = resize_to(image, None, size)[0]
    zoomed = resize_to(zoom_in(image, share), None, size)[0]
    return {
        "as_is": plain,
        "mirror": np.ascontiguousarray(plain[:, ::-1]),
        "zoom": zoomed,
        "zoom_mirror": np.ascontiguousarray(zoomed[:, ::-1]),
    }


def load_logits(path: Path | None, files: tuple[str, ...], share: float) -> dict[str, np.ndarray]:
    """The views already scored in ``path`` for exactly these crops and zoom."""
    if path is None or not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as saved:
        if tuple(saved["files"].tolist()) != files or float(saved["zoom"]) != share:
            raise SystemExit(f"{path} holds other crops or another zoom; name a new --logits file")
        return {k: np.asarray(saved[k], np.float64) for k in saved.files if "/" in k}


def save_logits(
    path: Path | None, files: tuple[str, ...], share: float, logits: dict[str, np.ndarray]
) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {"files": np.asarray(files), "zoom": np.asarray(share)}
    arrays.update(logits)
    np.savez(path, **arrays)


def arrangements(members: list[str]) -> list[dict[str, str]]:
    """Every assignment of a view set to each member, the shipped one first."""
    shipped = {m: SHIPPED.get(m, "as_is") for m in members}
    out = [shipped]
    for combo in itertools.product(VIEW_SETS, repeat=len(members)):
        arrangement = dict(zip(members, combo, strict=True))
        if arrangement != shipped:
            out.append(arrangement)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    common.add_dataset(parser, split="val", limit=0)
    parser.add_argument("--members", default=",".join(MEMBERS), help="comma-separated detectors")
    parser.add_argument("--weights", type=Path, default=common.ROOT / "weights")
    parser.add_argument("--backend", default="openvino", help="torch, onnxruntime or openvino")
    parser.add_argument("--precision", default="auto", help="fp32, bf16 or auto")
    parser.add_argument("--zoom", type=float, default=0.92, help="share of the crop kept (0.92)")
    parser.add_argument("--logits", type=Path, help=".npz of scored views, read and extended")
    args = parser.parse_args(argv)

    machine = common.cpu_snapshot()
    samples = select_split(load_samples(args.data), args.split)
    if args.limit:
        samples = limit_balanced(samples, args.limit, seed=0)
    y = labels_array(samples)
    files = tuple(str(s.path) for s in samples)
    groups = tuple(s.group for s in samples)
    logits = load_logits(args.logits, files, args.zoom)
    calibration: dict[str, tuple[float, float]] = {}
    seconds: dict[str, float] = {}
    for name in common.names(args.members):
        member = load_member(
            name,
            args.weights,
            backend=args.backend,
            cache_dir=common.ROOT / "var" / "cache",
            precision=args.precision,
        )
        calibration[name] = (member.temperature, member.bias)
        todo = [v for v in VIEWS if f"{name}/{v}" not in logits]
        if not todo:
            continue
        views = [views_of(read_rgb(s.path), member.input_size, args.zoom) for s in samples]
        for view in todo:
            started = time.perf_counter()
            crops = [v[view] for v in views]
            logits[f"{name}/{view}"] = np.asarray(
                member.infer(crops, BATCH, mirror=False).logits, np.float64
            )
            seconds[f"{name}/{view}"] = round(time.perf_counter() - started, 1)
            print(f"{name} {view}: {seconds[f'{name}/{view}']:.0f} s", flush=True)
            save_logits(args.logits, files, args.zoom, logits)

    scored = [m for m in calibration if all(f"{m}/{v}" in logits for v in VIEWS)]

    def member_logit(name: str, view_set: str) -> np.ndarray:
        return np.mean([logits[f"{name}/{v}"] for v in VIEW_SETS[view_set]], axis=0)

    members: dict[str, Any] = {}
    for name in scored:
        t, b = calibration[name]
        members[name] = {
            view_set: {
                "auc": float(roc_auc(member_logit(name, view_set), y) or 0.0),
                "log_loss": log_loss(calibrate(member_logit(name, view_set), t, b), y),
            }
            for view_set in VIEW_SETS
        }
        print(
            f"{name}: " + ", ".join(f"{vs} AUC {f['auc']:.4f}" for vs, f in members[name].items()),
            flush=True,
        )

    ensembles: list[dict[str, Any]] = []
    if len(scored) > 1:
        for arrangement in arrangements(scored):
            probs = {
                m: calibrate(member_logit(m, vs), *calibration[m]) for m, vs in arrangement.items()
            }
            table = ScoreTable(
                files=files, labels=y, groups=groups, probs=probs, weights=dict.fromkeys(probs, "")
            )
            fit = fit_ensemble(table, list(probs))
            cv = fit.cross_validated
            ensembles.append(
                {
                    "views": arrangement,
                    "passes_per_face": sum(len(VIEW_SETS[vs]) for vs in arrangement.values()),
                    "cross_validated": cv,
                    "member_weights": fit.calibration.member_weights,
                }
            )
        shipped_auc = ensembles[0]["cross_validated"]["auc"]
        for row in sorted(ensembles, key=lambda r: -r["cross_validated"]["auc"])[:12]:
            cv = row["cross_validated"]
            label = " ".join(f"{m}={vs}" for m, vs in row["views"].items())
            print(
                f"ensemble {label}: AUC {cv['auc']:.4f} ({cv['auc'] - shipped_auc:+.4f}), "
                f"log loss {cv['log_loss']:.4f}, ECE {cv['ece']:.4f}, "
                f"{row['passes_per_face']} passes a face"
            )
    common.write_json(
        args.json,
        {
            "data": str(args.data),
            "split": args.split,
            "crops": len(samples),
            "fakes": int(y.sum()),
            "zoom": args.zoom,
            "seconds_per_view": seconds,
            "members": members,
            "ensembles": ensembles,
            "machine_before": machine,
            "machine_after": common.cpu_snapshot(),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
