"""From a training run to the ``weights/`` layout the core loads.

``export_run`` takes the run's best checkpoint, fits the calibration (a
temperature and a bias) on the validation split
(:mod:`ensemble.training.calibrate`), picks the member's own threshold by the
documented rule (:func:`ensemble.evaluation.choose_threshold`),
and chooses the storage precision: int8 per-channel when its validation AUC
stays within ``AUC_TOLERANCE`` of fp32's, else fp16. It then writes the
safetensors shards (each at most ``MAX_SHARD_BYTES``) and the manifest into a
staging folder, reloads the member from there through the normal hash-checked
path to check that what was written is what was measured, and only then
installs it in the weights folder.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ensemble.crops import CropPolicy
from ensemble.errors import TrusttraceError, WeightsIntegrityError
from ensemble.evaluation import binary_metrics, choose_threshold
from ensemble.registry import MemberSpec
from ensemble.scoring import calibrate
from ensemble.training.batches import FaceDataset
from ensemble.training.calibrate import fit_member_calibration
from ensemble.training.data import Sample, data_digest, limit_balanced, load_samples, select
from ensemble.training.loop import describe_init, load_best, predict
from ensemble.training.runfiles import read_run_info
from ensemble.weights import (
    MANIFEST_NAME,
    MAX_SHARD_BYTES,
    Manifest,
    dequantize_int8,
    load_model,
    read_manifest,
    save_weights,
    stored_tensors,
)

logger = logging.getLogger(__name__)

# int8 is kept only when validation AUC moves by at most this much.
AUC_TOLERANCE = 0.005
# The reloaded member must reproduce the measured logits this closely.
RELOAD_ATOL = 1e-4
EVAL_BATCH = 64
# All weights committed to the repository together stay under this.
COMMITTED_WEIGHTS_LIMIT = 150 * 1000 * 1000


class ExportError(TrusttraceError, RuntimeError):
    """Export that cannot be completed, with the reason in words."""


@dataclass(frozen=True)
class ExportReport:
    manifest: Manifest
    quantization: str
    temperature: float
    threshold: float
    auc: dict[str, float | None]
    bias: float = 0.0


def installed_bytes(weights_dir: Path) -> int:
    """Bytes of every weight file listed by a manifest under ``weights_dir``."""
    total = 0
    for path in sorted(weights_dir.glob(f"*/{MANIFEST_NAME}")):
        manifest = read_manifest(weights_dir, path.parent.name)
        total += sum(f.bytes for f in manifest.files)
    return total


def roundtrip(state: Mapping[str, Tensor], quantization: str) -> dict[str, Tensor]:
    """The float32 state a member gets after storing ``state`` as
    ``quantization`` and loading it back (see :func:`ensemble.weights.save_weights`)."""
    stored: dict[str, Tensor] = {}
    for key, value in state.items():
        stored.update(stored_tensors(key, value, quantization))
    if quantization == "int8":
        stored = dequantize_int8(stored)
    return {k: (v.float() if v.is_floating_point() else v) for k, v in stored.items()}


def _logits(
    model: nn.Module, samples: list[Sample], spec: MemberSpec, size: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    ds = FaceDataset(samples, size, spec.mean, spec.std, train=False)
    # In the memory format predict feeds the crops in: fp32 B7 on 2 cores took
    # 116 ms a crop instead of 174 (16 crops, once, beside a training run), so
    # a pass over the 2,560 val crops about 5 minutes instead of 7.
    model = model.to(memory_format=torch.channels_last)
    return predict(model, DataLoader(ds, batch_size=EVAL_BATCH), "cpu", amp=False)


def _auc(logits: npt.NDArray[np.float64], labels: npt.NDArray[np.float64]) -> float | None:
    return binary_metrics(calibrate(logits, 1.0), labels).auc


def _installed_crop(weights_dir: Path, spec: MemberSpec) -> CropPolicy | None:
    """The crop policy the member installed in ``weights_dir`` records, if any:
    a re-export without ``crop`` keeps it (the framing belongs to the data)."""
    from ensemble.errors import WeightsError

    try:
        manifest = read_manifest(weights_dir, spec.name)
    except WeightsError:
        return None
    if manifest.crop is None:
        return None
    logger.info("keeping the installed crop policy %s of %s", dict(manifest.crop), spec.name)
    return manifest.crop_policy(spec.crop)


def export_run(
    run_dir: Path,
    spec: MemberSpec,
    weights_dir: Path,
    *,
    data: Path,
    description: str = "",
    max_shard_bytes: int = MAX_SHARD_BYTES,
    val_limit: int | None = None,
    crop: CropPolicy | None = None,
) -> ExportReport:
    """Calibrate, choose the precision and install ``run_dir``'s best model.

    ``crop`` is the face crop analysis must cut for these weights (the
    framing of the training crops); None keeps the policy of the member
    installed in ``weights_dir``, if it records one, else the registry's."""
    model, size = load_best(run_dir, spec)
    run_info = read_run_info(run_dir)
    run_config = run_info.get("config", {})
    seed = int(run_config.get("seed", 0))
    every = load_samples(data)
    trained_on = run_info.get("data_digest")
    if not trained_on:
        raise ExportError(
            f"{run_dir / 'run.json'} does not name the data the run was trained on "
            "(data_digest): the manifest could not say it; for a transfer from a lent "
            "machine, unpack it with --data"
        )
    # The temperature, threshold and metrics written below are measured
    # on ``data``, and the manifest names the run's data: they must be
    # the same data (a re-encoded or replaced crop counts as other data).
    here = data_digest(
        limit_balanced(
            select(every, "train"),
            run_config.get("limit"),
            seed,
            keep_pairs=bool(run_info.get("limit_keeps_pairs", False)),
        )
        + limit_balanced(select(every, "val"), run_config.get("val_limit"), seed)
    )
    if here != trained_on:
        raise ExportError(
            f"{data} is not the data {run_dir.name} was trained and validated on "
            f"(data digest {here[:12]}, the run's {str(trained_on)[:12]}): export "
            "with the run's --data"
        )
    if val_limit is None:
        val_limit = run_config.get("val_limit")
    # The same validation samples the run validated on (same limit, same seed),
    # unless another limit is asked for.
    samples = limit_balanced(select(every, "val"), val_limit, seed)
    if not samples:
        raise ExportError(f"{data} has no validation samples to calibrate on")
    if crop is None:
        crop = _installed_crop(weights_dir, spec)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    logits32, labels = _logits(model, samples, spec, size)
    auc: dict[str, float | None] = {"fp32": _auc(logits32, labels)}
    measured: dict[str, npt.NDArray[np.float64]] = {}
    transfer = run_info.get("transfer") or {}
    transferred_int8 = transfer.get("quantization") == "int8"
    # fp16 is measured below only if int8 is refused (a pass of B7 over the
    # val crops is minutes on a CPU).
    if transferred_int8:
        # Weights that are int8 already round to themselves (max |w| of
        # each channel is 127 steps): the same logits, not worth a pass.
        measured["int8"], auc["int8"] = logits32, auc["fp32"]
    else:
        model.load_state_dict(roundtrip(state, "int8"))
        measured["int8"], _ = _logits(model, samples, spec, size)
        auc["int8"] = _auc(measured["int8"], labels)
    ref = auc["fp32"]
    int8_auc = auc["int8"]
    if transferred_int8:
        # The weights came back from a lent machine already rounded to int8
        # (ensemble.training.gpu), so "fp32" above is the int8 model again:
        # the comparison is the one measured there, full precision against
        # int8 on the same (whole) validation split, not the full-precision
        # figure there against an int8 figure here on other samples
        # (--val-limit).
        ref = (transfer.get("val_full_precision") or {}).get("auc")
        int8_auc = (transfer.get("val_int8") or {}).get("auc")
        auc["fp32_before_transfer"] = ref
        auc["int8_before_transfer"] = int8_auc
    keep_int8 = (ref is None and int8_auc is None) or (
        ref is not None and int8_auc is not None and abs(ref - int8_auc) <= AUC_TOLERANCE
    )
    quant = "int8" if keep_int8 else "fp16"
    if quant not in measured:
        model.load_state_dict(roundtrip(state, quant))
        measured[quant], _ = _logits(model, samples, spec, size)
        auc[quant] = _auc(measured[quant], labels)
    logits = measured[quant]
    # Runs from before run.json kept "init" name only their --init-from:
    # described now, and marked so (the source may have changed since).
    init = run_info.get("init")
    if init is None and run_config.get("init_from"):
        init = {**describe_init(spec, Path(run_config["init_from"])), "described_at_export": True}
    temperature, bias = fit_member_calibration(logits, labels)
    probs = calibrate(logits, temperature, bias)
    choice = choose_threshold(probs, labels)
    metrics = binary_metrics(probs, labels, choice.threshold).to_dict()
    written: dict[str, Any] = {
        "input_size": size,
        "quantization": quant,
        "temperature": temperature,
        "bias": bias,
        "threshold": choice.threshold,
        "provenance": {
            "source": "trained",
            "data": description or str(data),
            "data_digest": run_info.get("data_digest"),
            "command": run_info.get("command"),
            "code_version": run_info.get("code_version"),
            "best_epoch": run_info.get("best_epoch"),
            "initialized_from": init,
            "recipe": run_info.get("recipe"),
            "training": {
                key: run_info.get(key)
                for key in (
                    "precision",
                    "paired",
                    "device",
                    "threads",
                    "torch",
                    "n_train",
                    "images_seen",
                    "trained_seconds",
                    "images_per_second",
                    "transfer",
                )
            },
            "calibrated": True,
        },
        "metrics": {
            "split": "val",
            "n": {"real": int((labels == 0).sum()), "fake": int((labels == 1).sum())},
            "auc_by_precision": auc,
            "stored_as": quant,
            "uncertain_band": choice.uncertain_band,
            **metrics,
        },
        "max_shard_bytes": max_shard_bytes,
        "crop": crop,
    }
    # Written and checked in a staging folder first, so a failed check leaves
    # the installed member as it was.
    with tempfile.TemporaryDirectory(prefix="export-") as staging:
        staged = save_weights(state, spec, Path(staging), **written)
        reloaded, _ = load_model(spec, Path(staging))
        again, _ = _logits(reloaded, samples, spec, size)
        if not np.allclose(again, logits, atol=RELOAD_ATOL):
            raise ExportError(
                f"the exported {spec.name} does not reproduce the measured validation logits "
                f"(max difference {np.abs(again - logits).max():.2e}); nothing was installed"
            )
    try:
        manifest = save_weights(
            state, spec, weights_dir, expect_sha256=staged.weights_sha256, **written
        )
    except WeightsIntegrityError as e:  # checked before anything was installed
        raise ExportError(str(e)) from e
    total = installed_bytes(weights_dir)
    if total > COMMITTED_WEIGHTS_LIMIT:
        logger.warning(
            "the members under %s take %.1f MB together, over the %.0f MB that may be "
            "committed (README, Export format)",
            weights_dir,
            total / 1e6,
            COMMITTED_WEIGHTS_LIMIT / 1e6,
        )
    logger.info(
        "exported %s as %s (T=%.3f, bias %.3f, threshold %.3f, AUC %s)",
        spec.name,
        quant,
        temperature,
        bias,
        choice.threshold,
        auc,
    )
    return ExportReport(manifest, quant, temperature, choice.threshold, auc, bias)
