"""What a training run writes into its folder besides checkpoints: the code
version, per-epoch logs and curves, validation predictions; and atomic saves."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from ensemble.errors import TrainingError
from ensemble.evaluation import save_figure
from ensemble.training.data import Sample

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class EpochLog:
    """One row of ``log.csv``: an epoch's training and validation figures."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    val_auc: float | None
    lr: float
    seconds: float


LOG_FIELDS = tuple(f.name for f in fields(EpochLog))


def code_version(root: Path | None = None) -> str:
    """``git describe``-like revision of the code (``+dirty`` when modified), or "unknown"."""
    import shutil

    cwd = root or Path(__file__).resolve().parents[2]
    git = shutil.which("git")
    if git is None:
        return "unknown"

    def run(*args: str) -> str:
        return subprocess.run(  # noqa: S603 (fixed arguments, git from PATH)
            [git, *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        rev = run("rev-parse", "HEAD")
        dirty = run("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def write_text_atomic(path: Path, text: str) -> None:
    """``text`` in ``path``, whole or not at all: a run stopped mid-write
    (its session's end, out of memory) left a truncated run.json that resume
    and export could not read."""
    tmp = _staged(path)
    tmp.write_text(text, encoding="utf-8", newline="")
    tmp.replace(path)


def _staged(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _predictions_text(samples: Sequence[Sample], logits: npt.NDArray[np.float64]) -> str:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["file", "label", "logit"])
    for s, z in zip(samples, logits, strict=True):
        writer.writerow([str(s.path), s.label, f"{z:.6f}"])
    return out.getvalue()


def write_predictions(
    path: Path, samples: Sequence[Sample], logits: npt.NDArray[np.float64]
) -> None:
    """``val_predictions.csv``'s rows (file, label, logit), written whole."""
    write_text_atomic(path, _predictions_text(samples, logits))


def save_best(
    best: Any,
    path: Path,
    predictions: Path,
    samples: Sequence[Sample],
    logits: npt.NDArray[np.float64],
) -> None:
    """The best epoch's checkpoint and its validation predictions, each
    written whole, the predictions moved into place right after the
    checkpoint: a stop while the checkpoint was written used to leave it
    beside an earlier epoch's predictions, which --summary and --candidate
    then described as this epoch's."""
    staged = _staged(predictions)
    staged.write_text(_predictions_text(samples, logits), encoding="utf-8", newline="")
    save_atomic(best, path)
    staged.replace(predictions)


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """``run_dir``'s run.json (empty when it has none), or
    :class:`TrainingError` when it cannot be read."""
    path = run_dir / "run.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TrainingError(f"{path} cannot be read ({e}): the run's record is damaged") from e
    if not isinstance(info, dict):
        raise TrainingError(f"{path} does not hold a run's record")
    return info


def read_predictions(path: Path) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``(logits, labels)`` from ``val_predictions.csv``."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return (
        np.asarray([float(r["logit"]) for r in rows]),
        np.asarray([float(r["label"]) for r in rows]),
    )


def write_logs(out: Path, history: Sequence[EpochLog], run_info: dict[str, Any]) -> None:
    with (out / "log.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        writer.writeheader()
        for h in history:
            writer.writerow(asdict(h))
    write_text_atomic(out / "log.json", json.dumps([asdict(h) for h in history], indent=2) + "\n")
    write_text_atomic(out / "run.json", json.dumps(run_info, indent=2) + "\n")
    save_figure(curves_figure(history), out / "curves.png")


def curves_figure(history: Sequence[EpochLog]) -> Figure:
    """Loss, accuracy and validation AUC per epoch (written after every epoch)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 4), dpi=100)
    epochs = [h.epoch for h in history]
    ax_loss, ax_acc, ax_auc = fig.subplots(1, 3)
    ax_loss.plot(epochs, [h.train_loss for h in history], marker="o", label="train")
    ax_loss.plot(epochs, [h.val_loss for h in history], marker="o", label="validation")
    ax_loss.set_title("loss")
    ax_acc.plot(epochs, [h.train_acc for h in history], marker="o", label="train")
    ax_acc.plot(epochs, [h.val_acc for h in history], marker="o", label="validation")
    ax_acc.set_title("accuracy")
    aucs = [(h.epoch, h.val_auc) for h in history if h.val_auc is not None]
    ax_auc.plot([e for e, _ in aucs], [a for _, a in aucs], marker="o", label="validation")
    ax_auc.set_title("ROC AUC")
    for ax in (ax_loss, ax_acc, ax_auc):
        ax.set_xlabel("epoch")
        ax.legend()
    return fig


def summarize_run(out: Path) -> dict[str, Any]:
    """A run's validation figures from its best epoch's predictions
    (``val_predictions.csv``, as validated: EMA weights, the run's
    precision), without exporting it: the metrics of the raw logits, the
    calibration (temperature and bias) an export would fit on them, the
    metrics after it (all at the 0.5 threshold), and the run's ``log.csv``
    rows."""
    from ensemble.evaluation import binary_metrics
    from ensemble.scoring import calibrate
    from ensemble.training.calibrate import fit_member_calibration

    path = out / "val_predictions.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no val_predictions.csv in {out}: no epoch was validated yet")
    logits, labels = read_predictions(path)
    temperature, bias = fit_member_calibration(logits, labels)
    history: list[dict[str, str]] = []
    if (out / "log.csv").is_file():
        with (out / "log.csv").open(newline="", encoding="utf-8") as fh:
            history = list(csv.DictReader(fh))
    return {
        "run": str(out),
        "samples": len(labels),
        "fakes": int(labels.sum()),
        "raw": binary_metrics(calibrate(logits, 1.0), labels).to_dict(),
        "temperature": temperature,
        "bias": bias,
        "calibrated": binary_metrics(calibrate(logits, temperature, bias), labels).to_dict(),
        "epochs": history,
    }
