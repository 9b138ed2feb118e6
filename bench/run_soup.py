"""What do training runs' best weights score on the validation crops, averaged
together (a uniform "model soup" of runs that grew from one another) or at
another input size than they trained at? Measured.

    python -m bench.run_soup --member effnet_b7 --data ../shared/datasets/dfdc_faces \
        --runs ~/.cache/trusttrace/runs/effnet_b7-g6 ~/.cache/trusttrace/runs/effnet_b7-g7 \
        --json var/eval/b7-soup-g6g7.json
    python -m bench.run_soup --member effnet_b7 --runs ~/.cache/trusttrace/runs/effnet_b7-g7 \
        --size 256

Each run folder's ``best.pt`` (what an export would install) is loaded; with
several runs, every floating-point tensor (weights and the batch-norm running
statistics alike) is their mean, which makes sense only for runs fine-tuned
from one another (one basin), not for runs trained apart. The model then
scores the split's crops in fp32 with torch, as a run's validation does
(``ensemble.training.loop.predict``), at ``--size`` (default: the size the
first run trained at). Printed: AUC, log loss and accuracy of the raw logits
(before any temperature, as a run's own validation reports them), the seconds
of the pass, and whether other processes shared the CPU. ``--predictions``
writes the logits as a run's ``val_predictions.csv`` is written; ``--save
FILE`` writes the averaged weights as a checkpoint that ``train_detector
--init-from FILE`` starts a new run from.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import common
from ensemble.errors import TrainingError
from ensemble.evaluation import log_loss, roc_auc
from ensemble.registry import REGISTRY
from ensemble.training.data import load_samples
from ensemble.training.data import select as select_split
from ensemble.training.loop import BEST

BATCH = 32


def soup(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of ``states``' floating-point tensors; other tensors (batch
    counters) are the last state's. The states must have the same keys and
    shapes (runs of one architecture)."""
    if not states:
        raise TrainingError("no weights to average")
    keys = states[0].keys()
    for other in states[1:]:
        if other.keys() != keys or any(other[k].shape != states[0][k].shape for k in keys):
            raise TrainingError("the runs' weights differ in their keys or shapes")
    out: dict[str, torch.Tensor] = {}
    for k in keys:
        first = states[0][k]
        if first.is_floating_point():
            total = torch.stack([s[k].double() for s in states]).mean(dim=0)
            out[k] = total.to(first.dtype)
        else:
            out[k] = states[-1][k].clone()
    return out


def save_soup(
    path: Path, member: str, input_size: int, state: dict[str, torch.Tensor], runs: list[Path]
) -> None:
    """Write a soup as a checkpoint ``train_detector --init-from FILE`` starts
    a new run from (the layout of a run's ``best.pt``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "member": member,
            "input_size": input_size,
            "state_dict": state,
            "soup_of": [str(r) for r in runs],
        },
        path,
    )


def _best(run: Path, member: str) -> tuple[dict[str, torch.Tensor], int]:
    path = run / BEST
    if not path.is_file():
        raise TrainingError(f"no {BEST} in {run}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("member") not in (None, member):
        raise TrainingError(f"{path} holds {ckpt['member']!r}, not {member!r}")
    return ckpt["state_dict"], int(ckpt["input_size"])


def main(argv: list[str] | None = None) -> int:
    from torch.utils.data import DataLoader

    from ensemble.training.batches import FaceDataset
    from ensemble.training.loop import predict
    from ensemble.training.runfiles import write_predictions

    parser = common.parser(__doc__)
    common.add_dataset(parser, split="val", limit=0)
    parser.add_argument("--member", required=True, help="the runs' detector")
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="run folders")
    parser.add_argument("--size", type=int, default=0, help="input size (0: the first run's)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--predictions", type=Path, help="write the logits as a CSV")
    parser.add_argument(
        "--save", type=Path, help="write the averaged weights here (for train_detector --init-from)"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    machine = common.cpu_snapshot()
    spec = REGISTRY.get(args.member)
    loaded = [_best(run, spec.name) for run in args.runs]
    trained_sizes = [size for _, size in loaded]
    size = args.size or trained_sizes[0]
    model = spec.build()
    averaged = soup([state for state, _ in loaded])
    model.load_state_dict(averaged)
    if args.save is not None:
        save_soup(args.save, spec.name, trained_sizes[0], averaged, list(args.runs))
    model = model.eval().to(memory_format=torch.channels_last)

    samples = select_split(load_samples(args.data), args.split)
    if args.limit:
        from ensemble.training.data import limit_balanced

        samples = limit_balanced(samples, args.limit, seed=0)
    dataset = FaceDataset(samples, size, spec.mean, spec.std, train=False)
    started = time.perf_counter()
    logits, labels = predict(model, DataLoader(dataset, batch_size=BATCH), "cpu", False)
    seconds = time.perf_counter() - started
    probs = 1 / (1 + np.exp(-logits))
    report: dict[str, Any] = {
        "member": spec.name,
        "runs": [str(r) for r in args.runs],
        "trained_sizes": trained_sizes,
        "size": size,
        "split": args.split,
        "crops": len(samples),
        "auc": roc_auc(probs, labels),
        "log_loss_raw": log_loss(probs, labels),
        "accuracy": float(((probs >= 0.5) == (labels == 1)).mean()),
        "seconds": round(seconds, 1),
        "machine_before": machine,
    }
    if args.predictions is not None:
        args.predictions.parent.mkdir(parents=True, exist_ok=True)
        write_predictions(args.predictions, samples, logits)
    others = "" if machine["idle"] else " (other processes shared the CPU)"
    print(
        f"{spec.name}, {len(args.runs)} run(s) averaged, {size} px, {len(samples)} crops: "
        f"AUC {report['auc']:.4f}, log loss (raw) {report['log_loss_raw']:.4f}, "
        f"accuracy {report['accuracy']:.3f}; {seconds:.0f} s{others}"
    )
    common.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
