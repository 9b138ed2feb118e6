"""Would scoring each face twice, as is and mirrored, make the detectors better? Measured.

    python -m bench.flip_tta --data ../shared/datasets/dfdc_faces --split val \
        --json var/eval/flip_tta.json

Each installed member scores every crop of the split as is and mirrored left
to right (the members were trained with random horizontal flips, so both are
faces they know); the test-time-augmented logit is the mean of the two. For
each member the figures are AUC and log loss with its installed temperature and bias
(and with one refitted on these crops, the same for both arms), and for the
ensemble the cross-validated fit of ``calibrate_ensemble`` (weighted logits
and a Platt layer, 5 folds by group) on each arm: all members mirrored,
none, and each member alone mirrored (``TRUSTTRACE_MIRROR``, README "Scoring
each face mirrored too"). Mirroring doubles a member's inference time; the
figures say what it buys. The backend and
precision are those named (default: what the site runs here).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from ensemble.evaluation import log_loss, roc_auc
from ensemble.members import load_member
from ensemble.scoring import calibrate
from ensemble.training.calibrate import fit_member_calibration
from ensemble.training.data import labels_array, limit_balanced, load_samples, read_rgb, resize_to
from ensemble.training.data import select as select_split
from ensemble.training.ensemble_fit import ScoreTable, fit_ensemble

BATCH = 16
MEMBERS = ["resnet50", "effnet_autoatt_b4", "effnet_b7"]


def _member_figures(
    logits: np.ndarray, y: np.ndarray, temperature: float, bias: float
) -> dict[str, float]:
    refit_t, refit_b = fit_member_calibration(logits, y)
    return {
        "auc": float(roc_auc(logits, y) or 0.0),
        "log_loss": log_loss(calibrate(logits, temperature, bias), y),
        "refit_temperature": refit_t,
        "refit_bias": refit_b,
        "log_loss_refit": log_loss(calibrate(logits, refit_t, refit_b), y),
    }


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    common.add_dataset(parser, split="val", limit=0)
    parser.add_argument("--members", default=",".join(MEMBERS), help="comma-separated detectors")
    parser.add_argument("--weights", type=Path, default=common.ROOT / "weights")
    parser.add_argument("--backend", default="openvino", help="torch, onnxruntime or openvino")
    parser.add_argument("--precision", default="auto", help="fp32, bf16 or auto")
    args = parser.parse_args(argv)

    machine = common.cpu_snapshot()
    samples = select_split(load_samples(args.data), args.split)
    if args.limit:
        samples = limit_balanced(samples, args.limit, seed=0)
    y = labels_array(samples)
    groups = tuple(s.group for s in samples)
    plain: dict[str, np.ndarray] = {}  # calibrated probabilities, as is
    tta: dict[str, np.ndarray] = {}  # calibrated probabilities, mean logit of both
    members: dict[str, Any] = {}
    for name in common.names(args.members):
        member = load_member(
            name,
            args.weights,
            backend=args.backend,
            cache_dir=common.ROOT / "var" / "cache",
            precision=args.precision,
        )
        size = member.input_size
        crops = [resize_to(read_rgb(s.path), None, size)[0] for s in samples]
        flipped = [np.ascontiguousarray(c[:, ::-1]) for c in crops]
        started = time.perf_counter()
        as_is = np.asarray(member.logits(crops, BATCH), np.float64)
        seconds = time.perf_counter() - started
        mirror = np.asarray(member.logits(flipped, BATCH), np.float64)
        both = (as_is + mirror) / 2.0
        t, b = member.temperature, member.bias
        members[name] = {
            "backend": member.backend,
            "precision": member.compute_precision,
            "seconds_per_pass": round(seconds, 1),
            "as_is": _member_figures(as_is, y, t, b),
            "mirrored_only": _member_figures(mirror, y, t, b),
            "mean_of_both": _member_figures(both, y, t, b),
            "logit_correlation": float(np.corrcoef(as_is, mirror)[0, 1]),
        }
        print(
            f"{name}: AUC {members[name]['as_is']['auc']:.4f} -> "
            f"{members[name]['mean_of_both']['auc']:.4f}, log loss "
            f"{members[name]['as_is']['log_loss']:.4f} -> "
            f"{members[name]['mean_of_both']['log_loss']:.4f} "
            f"({seconds:.0f} s a pass)",
            flush=True,
        )
        plain[name] = calibrate(as_is, t, b)
        tta[name] = calibrate(both, t, b)

    def ensemble(probs: dict[str, np.ndarray]) -> dict[str, Any]:
        table = ScoreTable(
            files=tuple(str(s.path) for s in samples),
            labels=y,
            groups=groups,
            probs=probs,
            weights=dict.fromkeys(probs, ""),
        )
        fit = fit_ensemble(table, list(probs))
        return {
            "cross_validated": fit.cross_validated,
            "member_weights": fit.calibration.member_weights,
        }

    report: dict[str, Any] = {"members": members}
    if len(plain) > 1:
        report["ensemble"] = {"as_is": ensemble(plain), "mean_of_both": ensemble(tta)}
        # One member mirrored, the others as is: what each member's mirror
        # buys the ensemble for that member's inference time alone.
        for name in plain:
            report["ensemble"][f"only_{name}_mirrored"] = ensemble(
                {m: tta[m] if m == name else p for m, p in plain.items()}
            )
        for arm in report["ensemble"]:
            cv = report["ensemble"][arm]["cross_validated"]
            print(
                f"ensemble {arm}: AUC {cv['auc']:.4f}, log loss {cv['log_loss']:.4f}, "
                f"ECE {cv['ece']:.4f}"
            )
    report.update(
        {
            "data": str(args.data),
            "split": args.split,
            "crops": len(samples),
            "fakes": int(y.sum()),
            "machine_before": machine,
            "machine_after": common.cpu_snapshot(),
        }
    )
    common.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
