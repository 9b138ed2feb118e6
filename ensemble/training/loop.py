"""One training loop for every member.

``train(config, spec)`` reads the dataset, builds the member's architecture,
and trains it with the recipe's settings: AdamW, warm-up then cosine
schedule, label smoothing, drop path (where the architecture has it), an
optional EMA of the weights, bf16 autocast and channels_last on CUDA (plain
fp32 on CPU), balanced sampling, validation every epoch and early stopping on
validation log loss.

Reproducibility: every random choice about a sample (which samples an epoch
draws, its augmentation, SBI, blackout) is drawn from a generator seeded by
``(seed, epoch, index)``, so it does not depend on worker scheduling or on
whether the run was resumed. The checkpoint ``last.pt`` holds the model,
optimizer, scheduler, EMA, torch RNG state, epoch, early-stopping state and
history, so a resumed run continues exactly where the interrupted one
stopped. ``run.json`` records the command, the data digest, the code version
and every setting.

Outputs in ``out``: ``last.pt``, ``best.pt`` (weights as evaluated: the EMA's
when EMA is on), ``val_predictions.csv`` (best epoch), ``log.csv``,
``log.json``, ``curves.png``, ``run.json``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ensemble.evaluation import log_loss, roc_auc, save_figure
from ensemble.media import RGBImage
from ensemble.registry import MemberSpec
from ensemble.training.augment import augment, build_augment
from ensemble.training.data import (
    DetectFn,
    Keypoints,
    Sample,
    attach_keypoints,
    data_digest,
    limit_balanced,
    load_samples,
    read_rgb,
    resize_to,
    select,
)
from ensemble.training.recipes import Recipe, recipe_for
from ensemble.training.sbi import self_blend
from ensemble.training.ssim_blackout import ssim_blackout

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
LAST = "last.pt"
BEST = "best.pt"
LOG_FIELDS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "lr", "seconds",
)  # fmt: skip


class TrainingError(RuntimeError):
    """A run that cannot start or continue, with the reason in words."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one run; ``None`` fields take the member's recipe value."""

    member: str
    data: Path
    out: Path
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    sbi_prob: float | None = None
    blackout_prob: float | None = None
    ema_decay: float | None = None
    no_ema: bool = False
    patience: int | None = None
    input_size: int | None = None
    device: str = "cpu"
    limit: int | None = None
    val_limit: int | None = None
    num_workers: int = 0
    augment: bool = True
    resume: bool = False
    command: str = ""


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    val_auc: float | None
    lr: float
    seconds: float


@dataclass
class TrainResult:
    out: Path
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    history: list[EpochLog] = field(default_factory=list)


# --- Data -------------------------------------------------------------------


def _sample_seed(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


class FaceDataset(Dataset[tuple[Tensor, Tensor, int]]):
    """Crops as normalised ``[3, S, S]`` tensors with fake-labels.

    In training mode, reals may become self-blended pseudo-fakes
    (``sbi_prob``), fakes may get the SSIM blackout (``blackout_prob``), and
    every crop goes through :func:`ensemble.training.augment.build_augment`.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        train: bool,
        seed: int = 0,
        sbi_prob: float = 0.0,
        blackout_prob: float = 0.0,
        use_augment: bool = True,
    ) -> None:
        self.samples = list(samples)
        self.size = size
        self.mean = np.asarray(mean, np.float32).reshape(3, 1, 1) * 255
        self.std = np.asarray(std, np.float32).reshape(3, 1, 1) * 255
        self.train = train
        self.seed = seed
        self.sbi_prob = sbi_prob
        self.blackout_prob = blackout_prob
        self.epoch = 0
        self.compose = build_augment() if train and use_augment else None
        self.keypoints: dict[Path, Keypoints | None] = {s.path: s.keypoints for s in self.samples}

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, index: int) -> tuple[RGBImage, int]:
        """The crop as the model will see it (before normalisation) and its label."""
        s = self.samples[index]
        img, kp = resize_to(read_rgb(s.path), s.keypoints, self.size)
        label = s.label
        if not self.train:
            return img, label
        rng = _sample_seed(self.seed, self.epoch, index)
        if label == 0 and self.sbi_prob > 0 and rng.random() < self.sbi_prob:
            img, label = self_blend(img, kp, rng).image, 1
        elif label == 1 and self.blackout_prob > 0 and rng.random() < self.blackout_prob:
            original = kp_original = None
            if s.original is not None:
                original, kp_original = resize_to(
                    read_rgb(s.original), self.keypoints.get(s.original), self.size
                )
            img = ssim_blackout(
                img, rng, original=original, kp_fake=kp, kp_original=kp_original
            ).image
        if self.compose is not None:
            img = augment(self.compose, img, int(rng.integers(2**31 - 1)))
        return img, label

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        img, label = self.image(index)
        x = (img.transpose(2, 0, 1).astype(np.float32) - self.mean) / self.std
        return torch.from_numpy(x), torch.tensor(float(label)), index


class BalancedSampler(Sampler[int]):
    """``len(labels)`` indices per epoch, drawn with replacement so both
    classes are equally likely; the draw depends only on (seed, epoch)."""

    def __init__(self, labels: Sequence[int], seed: int) -> None:
        y = np.asarray(labels)
        counts = np.bincount(y, minlength=2).astype(np.float64)
        weights = np.where(counts[y] > 0, 1.0 / np.maximum(counts[y], 1), 0.0)
        self.p = weights / weights.sum()
        self.n = len(y)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch, 0xBA1])
        return iter(rng.choice(self.n, size=self.n, replace=True, p=self.p).tolist())


# --- Model helpers ----------------------------------------------------------


def apply_drop_path(model: nn.Module, rate: float) -> bool:
    """Stochastic depth at ``rate`` (linearly increasing with depth) where the
    architecture has it: timm blocks' ``drop_path`` slots, efficientnet-pytorch's
    ``drop_connect_rate``. Returns whether anything was set."""
    applied = False
    for module in model.modules():
        params = getattr(module, "_global_params", None)
        if params is not None and hasattr(params, "drop_connect_rate"):
            module._global_params = params._replace(drop_connect_rate=rate)
            applied = True
    # timm blocks keep an nn.Identity (EfficientNet) or None (ResNet) in their
    # ``drop_path`` slot when built without stochastic depth.
    slots = [
        m
        for m in model.modules()
        if hasattr(m, "drop_path")
        and (m.drop_path is None or isinstance(m.drop_path, nn.Identity | _timm_drop_path()))
    ]
    if slots and rate > 0:
        drop_path = _timm_drop_path()
        for i, block in enumerate(slots):
            block.drop_path = drop_path(rate * i / max(len(slots) - 1, 1))
        applied = True
    return applied


def _timm_drop_path() -> type[nn.Module]:
    from timm.layers.drop import DropPath

    cls: type[nn.Module] = DropPath
    return cls


class Ema:
    """Exponential moving average of a model's parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        import copy

        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_state = self.model.state_dict()
        for key, value in model.state_dict().items():
            target = ema_state[key]
            if value.is_floating_point():
                target.mul_(self.decay).add_(value.detach(), alpha=1 - self.decay)
            else:
                target.copy_(value)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier per step: linear warm-up, then cosine from 1 to ``min_ratio``."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(total_steps - warmup_steps, 1)
        t = min((step - warmup_steps) / span, 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def code_version(root: Path | None = None) -> str:
    """``git describe``-like revision of the code (``+dirty`` when modified), or "unknown"."""
    import shutil

    cwd = root or Path(__file__).resolve().parents[2]
    git = shutil.which("git")
    if git is None:
        return "unknown"
    try:
        rev = subprocess.run(  # noqa: S603 (fixed arguments, git from PATH)
            [git, "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True,
            timeout=10,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(  # noqa: S603
            [git, "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


# --- The loop ---------------------------------------------------------------


def _resolve(config: TrainConfig, spec: MemberSpec) -> Recipe:
    r = recipe_for(spec)
    return replace(
        r,
        epochs=config.epochs if config.epochs is not None else r.epochs,
        batch_size=config.batch_size or r.batch_size,
        lr=config.lr or r.lr,
        sbi_prob=config.sbi_prob if config.sbi_prob is not None else r.sbi_prob,
        blackout_prob=config.blackout_prob if config.blackout_prob is not None else r.blackout_prob,
        ema_decay=None if config.no_ema else (config.ema_decay or r.ema_decay),
        patience=config.patience or r.patience,
        input_size=config.input_size or r.input_size,
    )


@torch.no_grad()
def predict(
    model: nn.Module, loader: DataLoader[Any], device: str, amp: bool
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Logits and labels of every sample of ``loader`` (in dataset order)."""
    model.eval()
    logits: list[npt.NDArray[np.float64]] = []
    labels: list[npt.NDArray[np.float64]] = []
    for x, y, _ in loader:
        x = x.to(device)
        if device.startswith("cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        logits.append(out.float().reshape(-1).cpu().numpy().astype(np.float64))
        labels.append(y.numpy().astype(np.float64))
    return np.concatenate(logits), np.concatenate(labels)


def _val_metrics(
    logits: npt.NDArray[np.float64], labels: npt.NDArray[np.float64]
) -> tuple[float, float, float | None]:
    probs = 1 / (1 + np.exp(-logits))
    acc = float(((probs >= 0.5) == (labels == 1)).mean())
    return log_loss(probs, labels), acc, roc_auc(probs, labels)


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def train(
    config: TrainConfig,
    spec: MemberSpec,
    *,
    detect: DetectFn | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``spec``'s architecture as ``config`` says (see module docstring).

    ``detect`` finds keypoints on crops that lack them (needed by SBI and the
    blackout's face parts; without it those fall back as documented).
    ``on_epoch`` is called after each epoch's checkpoint is written.
    """
    from tqdm import tqdm

    recipe = _resolve(config, spec)
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    device = config.device
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise TrainingError(f"device {device!r} was asked for but CUDA is not available")
    torch.manual_seed(config.seed)

    samples = load_samples(config.data)
    train_samples = limit_balanced(select(samples, "train"), config.limit, config.seed)
    val_samples = limit_balanced(select(samples, "val"), config.val_limit, config.seed)
    if not train_samples or not val_samples:
        raise TrainingError(
            f"{config.data} needs both train and val samples "
            f"(found {len(train_samples)} and {len(val_samples)})"
        )
    if len({s.label for s in train_samples}) < 2 and recipe.sbi_prob == 0:
        raise TrainingError("the training split holds one class only; add data or use --sbi")
    if detect is not None and (recipe.sbi_prob > 0 or recipe.blackout_prob > 0):
        train_samples = attach_keypoints(train_samples, detect, out / "keypoints.json")

    train_ds = FaceDataset(
        train_samples, recipe.input_size, spec.mean, spec.std, train=True, seed=config.seed,
        sbi_prob=recipe.sbi_prob, blackout_prob=recipe.blackout_prob,
        use_augment=config.augment,
    )  # fmt: skip
    val_ds = FaceDataset(val_samples, recipe.input_size, spec.mean, spec.std, train=False)
    sampler = BalancedSampler([s.label for s in train_samples], config.seed)
    train_loader = DataLoader(
        train_ds, batch_size=recipe.batch_size, sampler=sampler, drop_last=False,
        num_workers=config.num_workers, pin_memory=cuda,
        persistent_workers=False,
    )  # fmt: skip
    val_loader = DataLoader(
        val_ds, batch_size=recipe.batch_size, shuffle=False, num_workers=config.num_workers
    )

    model = spec.build()
    has_drop_path = apply_drop_path(model, recipe.drop_path) if recipe.drop_path else False
    model = model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    ema = Ema(model, recipe.ema_decay) if recipe.ema_decay else None
    optimizer = torch.optim.AdamW(_param_groups(model, recipe.weight_decay), lr=recipe.lr)
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * recipe.epochs
    warmup = round(recipe.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, warmup, recipe.min_lr_ratio)
    )
    criterion = nn.BCEWithLogitsLoss()
    amp = cuda

    start_epoch, best_loss, best_epoch, bad_epochs = 0, math.inf, -1, 0
    history: list[EpochLog] = []
    if config.resume:
        last = out / LAST
        if not last.is_file():
            raise TrainingError(f"--resume: no checkpoint {last} to resume from")
        ckpt = torch.load(last, map_location=device, weights_only=True)
        if ckpt.get("version") != CHECKPOINT_VERSION or ckpt.get("member") != spec.name:
            raise TrainingError(f"{last} is not a checkpoint of {spec.name!r} from this version")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.model.load_state_dict(ckpt["ema"])
        torch.set_rng_state(ckpt["torch_rng"])
        if cuda and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        start_epoch = int(ckpt["epoch"]) + 1
        best_loss, best_epoch = float(ckpt["best_loss"]), int(ckpt["best_epoch"])
        bad_epochs = int(ckpt["bad_epochs"])
        history = [EpochLog(**row) for row in ckpt["history"]]
        logger.info("resumed %s at epoch %d", last, start_epoch)

    digest = data_digest(train_samples + val_samples)
    run_info: dict[str, Any] = {
        "member": spec.name,
        "command": config.command,
        "code_version": code_version(),
        "data": str(config.data),
        "data_digest": digest,
        "n_train": {"real": sum(s.label == 0 for s in train_samples),
                    "fake": sum(s.label == 1 for s in train_samples)},
        "n_val": {"real": sum(s.label == 0 for s in val_samples),
                  "fake": sum(s.label == 1 for s in val_samples)},
        "recipe": asdict(recipe),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "device": device,
        "amp": "bf16" if amp else "fp32",
        "drop_path_applied": has_drop_path,
        "torch": torch.__version__,
    }  # fmt: skip
    stopped_early = False
    for epoch in range(start_epoch, recipe.epochs):
        started = time.perf_counter()
        train_ds.epoch = sampler.epoch = epoch
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        bar = tqdm(
            train_loader, desc=f"{spec.name} epoch {epoch + 1}/{recipe.epochs}",
            disable=not progress, leave=False,
        )  # fmt: skip
        for x, y, _ in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            target = y * (1 - recipe.label_smoothing) + 0.5 * recipe.label_smoothing
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                logits = model(x).reshape(-1)
            loss = criterion(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            n = len(y)
            total += n
            loss_sum += float(loss.detach()) * n
            correct += int(((logits.detach() >= 0) == (y >= 0.5)).sum())
            bar.set_postfix(loss=f"{loss_sum / total:.4f}", acc=f"{correct / total:.3f}")
        bar.close()

        evaluated = ema.model if ema is not None else model
        val_logits, val_labels = predict(evaluated, val_loader, device, amp)
        val_loss, val_acc, val_auc = _val_metrics(val_logits, val_labels)
        row = EpochLog(
            epoch=epoch + 1, train_loss=loss_sum / max(total, 1),
            train_acc=correct / max(total, 1), val_loss=val_loss, val_acc=val_acc,
            val_auc=val_auc, lr=float(scheduler.get_last_lr()[0]),
            seconds=time.perf_counter() - started,
        )  # fmt: skip
        history.append(row)
        logger.info(
            "%s epoch %d: train loss %.4f acc %.3f, val loss %.4f acc %.3f auc %s",
            spec.name, row.epoch, row.train_loss, row.train_acc, val_loss, val_acc,
            "n/a" if val_auc is None else f"{val_auc:.4f}",
        )  # fmt: skip
        if val_loss < best_loss:
            best_loss, best_epoch, bad_epochs = val_loss, epoch + 1, 0
            _save_atomic(
                {"member": spec.name, "epoch": epoch + 1, "input_size": recipe.input_size,
                 "state_dict": evaluated.state_dict()},
                out / BEST,
            )  # fmt: skip
            _write_predictions(out / "val_predictions.csv", val_samples, val_logits)
        else:
            bad_epochs += 1
        stop = bad_epochs >= recipe.patience
        _save_atomic(
            {
                "version": CHECKPOINT_VERSION, "member": spec.name, "epoch": epoch,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "ema": ema.model.state_dict() if ema is not None else None,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if cuda else None,
                "best_loss": best_loss, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                "history": [asdict(h) for h in history],
            },
            out / LAST,
        )  # fmt: skip
        _write_logs(out, history, {**run_info, "best_epoch": best_epoch,
                                   "best_val_loss": best_loss, "stopped_early": stop})  # fmt: skip
        if on_epoch is not None:
            on_epoch(row)
        if stop:
            stopped_early = True
            logger.info("early stop after epoch %d (best %d)", epoch + 1, best_epoch)
            break
    if not history:
        raise TrainingError("no epoch was run (is --epochs 0, or was the run already finished?)")
    _write_logs(out, history, {**run_info, "best_epoch": best_epoch, "best_val_loss": best_loss,
                               "stopped_early": stopped_early})  # fmt: skip
    return TrainResult(out, best_epoch, best_loss, stopped_early, history)


def _write_predictions(
    path: Path, samples: Sequence[Sample], logits: npt.NDArray[np.float64]
) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "logit"])
        for s, z in zip(samples, logits, strict=True):
            writer.writerow([str(s.path), s.label, f"{z:.6f}"])


def read_predictions(path: Path) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``(logits, labels)`` from ``val_predictions.csv``."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return (
        np.asarray([float(r["logit"]) for r in rows]),
        np.asarray([float(r["label"]) for r in rows]),
    )


def _write_logs(out: Path, history: Sequence[EpochLog], run_info: dict[str, Any]) -> None:
    with (out / "log.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        writer.writeheader()
        for h in history:
            writer.writerow(asdict(h))
    (out / "log.json").write_text(
        json.dumps([asdict(h) for h in history], indent=2) + "\n", encoding="utf-8"
    )
    (out / "run.json").write_text(json.dumps(run_info, indent=2) + "\n", encoding="utf-8")
    save_figure(curves_figure(history), out / "curves.png")


def curves_figure(history: Sequence[EpochLog]) -> Any:
    """Loss and accuracy per epoch, train and validation (the seeds' plots)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    epochs = [h.epoch for h in history]
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h.train_loss for h in history], marker="o", label="train")
    ax_loss.plot(epochs, [h.val_loss for h in history], marker="o", label="validation")
    ax_loss.set_title("loss")
    ax_acc.plot(epochs, [h.train_acc for h in history], marker="o", label="train")
    ax_acc.plot(epochs, [h.val_acc for h in history], marker="o", label="validation")
    ax_acc.set_title("accuracy")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.legend()
    return fig


def load_best(out: Path, spec: MemberSpec) -> tuple[nn.Module, int]:
    """The best checkpoint's model (eval mode) and its input size."""
    path = out / BEST
    if not path.is_file():
        raise TrainingError(f"no {BEST} in {out}; train first")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = spec.build()
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), int(ckpt["input_size"])
