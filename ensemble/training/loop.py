"""One training loop for every member.

``train(config, spec)`` reads the dataset, decodes every crop once into
memory at the training size (:class:`CropStore`, cached on disk), builds the
member's architecture, and trains it with the recipe's settings: AdamW,
warm-up then cosine schedule, label smoothing, drop path and dropout (where
the architecture has them), an optional EMA of the weights, bf16 autocast
where the hardware computes bf16 (CUDA, or a CPU with AMX / AVX-512 BF16;
fp32 elsewhere) with channels_last everywhere, paired real/fake batches or
balanced sampling, validation every epoch and early stopping on validation
log loss.

Runs span sessions: ``time_budget`` stops cleanly, ``last.pt`` is written at
least every ``checkpoint_minutes`` and at every epoch's end, SIGTERM/SIGINT
stop after the current step, and ``resume`` continues mid-epoch exactly. The
batches of an epoch are a function of ``(seed, epoch)`` (:func:`epoch_plan`),
every random choice about a sample (SBI, blackout, augmentation) of
``(seed, epoch, slot)``, and the checkpoint holds the model, optimizer,
scheduler, EMA, torch RNG state, the batch reached, the epoch's running sums,
early-stopping state and history. ``run.json`` records the command, the data
digest, the code version, every setting and the measured throughput.

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
import zipfile
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
    split_leaks,
)
from ensemble.training.recipes import Recipe, recipe_for
from ensemble.training.sbi import self_blend
from ensemble.training.ssim_blackout import ssim_blackout

logger = logging.getLogger(__name__)

# 2: EMA update count, the settings the run was started with.
# 3: mid-epoch state (batches done, running sums), precision, pairing.
CHECKPOINT_VERSION = 3
# The EMA decay warms up as (1 + n) / (EMA_WARMUP + n) after n updates.
EMA_WARMUP = 10
LAST = "last.pt"
# --device auto: CUDA when available, else the CPU.
AUTO_DEVICE = "auto"
# --precision auto: bf16 autocast where the hardware computes in bf16, else fp32.
AUTO_PRECISION = "auto"
PRECISIONS = (AUTO_PRECISION, "bf16", "fp32")
DEFAULT_CHECKPOINT_MINUTES = 10.0
# CPU flags under which oneDNN runs bf16 convolutions natively (AMX tiles or
# AVX-512 BF16 dot products); without them bf16 autocast is emulated and slower.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
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
    warmup_epochs: float | None = None
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
    # auto: bf16 autocast where the hardware has bf16 (CUDA, or a CPU with
    # AMX / AVX-512 BF16), else fp32.
    precision: str = AUTO_PRECISION
    # Minutes after which the run checkpoints and stops cleanly (None: no limit).
    time_budget: float | None = None
    # A mid-epoch checkpoint at least this often (minutes).
    checkpoint_minutes: float = DEFAULT_CHECKPOINT_MINUTES
    # Where decoded crops are cached between runs (None: decoded every run).
    cache_dir: Path | None = None
    # A weights folder whose installed member starts a new run (not a resume).
    init_from: Path | None = None
    # torch.compile the training model (measured in bench/train_speed.py).
    compile: bool = False
    # Paired real/fake batches (None: the recipe's choice).
    paired: bool | None = None


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
    # Stopped by the time budget or a signal; ``--resume`` continues it.
    interrupted: bool = False


# --- Data -------------------------------------------------------------------


def _sample_seed(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


class CropStore:
    """Every crop of a sample list decoded once and resized to the training
    size: a ``uint8 [N, S, S, 3]`` array in memory.

    Decoding a JPEG and resizing it costs more than a small network's step on
    two cores; done once, an epoch reads pixels from memory. With a
    ``cache_dir`` the array is kept on disk (named by the data digest, the
    size and the sample order) so later runs and resumptions skip decoding.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        size: int,
        *,
        cache_dir: Path | None = None,
        digest: str = "",
        progress: bool = False,
    ) -> None:
        self.size = size
        self.index = {p: i for i, p in enumerate(paths)}
        cache = self._cache_path(paths, size, cache_dir, digest)
        if cache is not None and cache.is_file():
            try:
                with np.load(cache) as stored:
                    pixels, shapes = stored["pixels"], stored["shapes"]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
                logger.warning("ignoring the unreadable crop cache %s (%s)", cache, e)
            else:
                if pixels.shape == (len(paths), size, size, 3) and pixels.dtype == np.uint8:
                    self.pixels: npt.NDArray[np.uint8] = pixels
                    self.shapes: npt.NDArray[np.int64] = shapes
                    logger.info("read %d decoded crops from %s", len(paths), cache)
                    return
                logger.warning("ignoring %s: shape %s does not fit this run", cache, pixels.shape)
        self.pixels, self.shapes = self._decode(paths, size, progress)
        if cache is not None:
            self._write_cache(cache)

    def _write_cache(self, cache: Path) -> None:
        """Best effort: a cache that cannot be written only costs decoding next time."""
        import os
        import uuid

        tmp = cache.with_name(f"{cache.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp.npz")
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(tmp, pixels=self.pixels, shapes=self.shapes)
            tmp.replace(cache)
        except OSError as e:
            logger.warning("could not cache decoded crops in %s (%s)", cache, e)
            tmp.unlink(missing_ok=True)
            return
        logger.info("cached %d decoded crops in %s", len(self.pixels), cache)

    @staticmethod
    def _cache_path(
        paths: Sequence[Path], size: int, cache_dir: Path | None, digest: str
    ) -> Path | None:
        if cache_dir is None or not digest:
            return None
        import hashlib

        order = hashlib.sha256("\n".join(str(p) for p in paths).encode()).hexdigest()[:16]
        return cache_dir / f"crops-{digest[:16]}-{order}-{size}.npz"

    @staticmethod
    def _decode(
        paths: Sequence[Path], size: int, progress: bool
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        from tqdm import tqdm

        pixels = np.empty((len(paths), size, size, 3), np.uint8)
        shapes = np.empty((len(paths), 2), np.int64)
        for i, path in enumerate(tqdm(paths, desc="decoding crops", disable=not progress)):
            image = read_rgb(path)
            shapes[i] = image.shape[:2]
            pixels[i] = resize_to(image, None, size)[0]
        return pixels, shapes

    def get(
        self, path: Path, keypoints: Keypoints | None
    ) -> tuple[RGBImage, Keypoints | None] | None:
        """What :func:`resize_to` gives for the crop of ``path`` (a copy of
        the pixels; keypoints scaled from the file's pixels), or None when
        the crop is not stored."""
        i = self.index.get(path)
        if i is None:
            return None
        image: RGBImage = np.array(self.pixels[i])
        h, w = (int(v) for v in self.shapes[i])
        if keypoints is None or (h, w) == (self.size, self.size):
            return image, keypoints
        sx, sy = self.size / w, self.size / h
        return image, tuple((x * sx, y * sy) for x, y in keypoints)


class FaceDataset(Dataset[tuple[Tensor, Tensor, int]]):
    """Crops as normalised ``[3, S, S]`` tensors with fake-labels.

    In training mode, reals may become self-blended pseudo-fakes
    (``sbi_prob``), fakes may get the SSIM blackout (``blackout_prob``), and
    every crop goes through :func:`ensemble.training.augment.build_augment`.
    Pixels come from a :class:`CropStore` when one is given, else from disk.
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
        store: CropStore | None = None,
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
        self.store = store
        self.compose = build_augment() if train and use_augment else None
        self.keypoints: dict[Path, Keypoints | None] = {s.path: s.keypoints for s in self.samples}

    def __len__(self) -> int:
        return len(self.samples)

    def _pixels(self, path: Path, keypoints: Keypoints | None) -> tuple[RGBImage, Keypoints | None]:
        stored = self.store.get(path, keypoints) if self.store is not None else None
        if stored is not None:
            return stored
        return resize_to(read_rgb(path), keypoints, self.size)

    def image(
        self, index: int, slot: int | None = None, aug_key: int | None = None
    ) -> tuple[RGBImage, int]:
        """The crop as the model will see it (before normalisation) and its label.

        ``slot`` (default ``index``) seeds the sample's random choices (SBI,
        blackout); ``aug_key`` (default ``slot``) seeds its augmentation, so
        the two crops of a real/fake pair can share one augmentation.
        """
        s = self.samples[index]
        img, kp = self._pixels(s.path, s.keypoints)
        label = s.label
        if not self.train:
            return img, label
        slot = index if slot is None else slot
        rng = _sample_seed(self.seed, self.epoch, slot)
        if label == 0 and self.sbi_prob > 0 and rng.random() < self.sbi_prob:
            img, label = self_blend(img, kp, rng).image, 1
        elif label == 1 and self.blackout_prob > 0 and rng.random() < self.blackout_prob:
            original = kp_original = None
            if s.original is not None:
                original, kp_original = self._pixels(s.original, self.keypoints.get(s.original))
            img = ssim_blackout(
                img, rng, original=original, kp_fake=kp, kp_original=kp_original
            ).image
        if self.compose is not None:
            key = slot if aug_key is None else aug_key
            aug_rng = _sample_seed(self.seed, self.epoch, key + AUG_KEY_OFFSET)
            aug_seed = int(aug_rng.integers(2**31 - 1))
            img = augment(self.compose, img, aug_seed)
        return img, label

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        img, label = self.image(index)
        x = (img.transpose(2, 0, 1).astype(np.float32) - self.mean) / self.std
        return torch.from_numpy(x), torch.tensor(float(label)), index

    def batch(
        self, indices: Sequence[int], slots: Sequence[int], aug_keys: Sequence[int]
    ) -> tuple[Tensor, Tensor]:
        """Normalised ``[B, 3, S, S]`` (channels_last memory) and labels."""
        images, labels = [], []
        for index, slot, key in zip(indices, slots, aug_keys, strict=True):
            img, label = self.image(index, slot, key)
            images.append(img)
            labels.append(float(label))
        # NHWC uint8 permuted to NCHW is already in channels_last memory order.
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
        mean = torch.from_numpy(self.mean).reshape(1, 3, 1, 1)
        std = torch.from_numpy(self.std).reshape(1, 3, 1, 1)
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        return x, torch.tensor(labels)


# Augmentation seeds are drawn from (seed, epoch, key + this), apart from the
# generators of the other random choices (keyed by slot).
AUG_KEY_OFFSET = 1 << 40


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
        return iter(self.draw(self.epoch))

    def draw(self, epoch: int) -> list[int]:
        """The indices of ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch, 0xBA1])
        out: list[int] = rng.choice(self.n, size=self.n, replace=True, p=self.p).tolist()
        return out


@dataclass(frozen=True)
class Batch:
    """One training batch of the epoch plan: sample indices, the slot that
    seeds each sample's random choices, and its augmentation key."""

    indices: tuple[int, ...]
    slots: tuple[int, ...]
    aug_keys: tuple[int, ...]


def real_fake_pairs(samples: Sequence[Sample]) -> list[tuple[int, int]]:
    """``(real, fake)`` index pairs: each fake with the real crop it was made from."""
    by_path = {s.path: i for i, s in enumerate(samples) if s.label == 0}
    return [
        (by_path[s.original], i)
        for i, s in enumerate(samples)
        if s.label == 1 and s.original is not None and s.original in by_path
    ]


def epoch_plan(
    samples: Sequence[Sample], batch_size: int, seed: int, epoch: int, *, paired: bool
) -> list[Batch]:
    """The batches of one epoch, a function of (samples, seed, epoch) only.

    Paired: each batch holds ``batch_size // 2`` real/fake pairs; a fake is
    paired with the real it was made from (both crops share one augmentation,
    so the pair differs only where the face was manipulated: the model cannot
    learn the scene, the person or the camera as a shortcut); reals and fakes
    without a partner are paired at random. Every fake is seen once per epoch.
    Unpaired: ``len(samples)`` draws with replacement, both classes equally
    likely (:class:`BalancedSampler`).
    """
    if not paired:
        order = BalancedSampler([s.label for s in samples], seed).draw(epoch)
        if len(order) % batch_size == 1 and len(order) > 1:
            # A batch of one cannot train a BatchNorm layer; leave that sample out.
            order = order[:-1]
        batches = []
        for start in range(0, len(order), batch_size):
            chunk = tuple(order[start : start + batch_size])
            places = tuple(range(start, start + len(chunk)))
            batches.append(Batch(chunk, places, places))
        return batches
    rng = np.random.default_rng([seed, epoch, 0xBA1])
    pairs = real_fake_pairs(samples)
    paired_reals = {r for r, _ in pairs}
    paired_fakes = {f for _, f in pairs}
    reals = [i for i, s in enumerate(samples) if s.label == 0]
    lone_reals = [i for i in reals if i not in paired_reals]
    lone_fakes = [i for i, s in enumerate(samples) if s.label == 1 and i not in paired_fakes]
    if lone_fakes and not reals:
        raise TrainingError("paired batches need real crops; train without pairing")
    # Fakes without their original meet the unpaired reals first, then random reals.
    partners = [int(v) for v in rng.permutation(lone_reals)][: len(lone_fakes)]
    partners += [int(v) for v in rng.choice(reals, len(lone_fakes) - len(partners))]
    all_pairs = pairs + list(zip(partners, lone_fakes, strict=True))
    shuffled = rng.permutation(len(all_pairs))
    per_batch = max(batch_size // 2, 1)
    batches = []
    for start in range(0, len(shuffled), per_batch):
        indices: list[int] = []
        slots: list[int] = []
        keys: list[int] = []
        for k in range(start, min(start + per_batch, len(shuffled))):
            real, fake = all_pairs[int(shuffled[k])]
            indices += [real, fake]
            slots += [2 * k, 2 * k + 1]
            keys += [2 * k, 2 * k]
        batches.append(Batch(tuple(indices), tuple(slots), tuple(keys)))
    return batches


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
    """Exponential moving average of a model's parameters and buffers.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n``
    updates (as timm's and TensorFlow's EMA do): with a fixed 0.999 the
    average would still hold about 72% of the random initialisation after
    the first 325 steps (one dfdc_faces epoch of ResNet50), and validation,
    early stopping and export all use the EMA.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        import copy

        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        return min(self.decay, (1 + self.updates) / (EMA_WARMUP + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.updates += 1
        ema_state = self.model.state_dict()
        for key, value in model.state_dict().items():
            target = ema_state[key]
            if value.is_floating_point():
                target.mul_(decay).add_(value.detach(), alpha=1 - decay)
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


def smooth_targets(labels: Tensor, smoothing: float) -> Tensor:
    """Binary label smoothing: 0/1 targets become ``smoothing / 2`` and
    ``1 - smoothing / 2`` (the two-class form of smoothing towards uniform)."""
    return labels * (1 - smoothing) + 0.5 * smoothing


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


def resolve_device(device: str) -> str:
    """``"auto"``: CUDA when there is one, else the CPU; anything else as given."""
    if device == AUTO_DEVICE:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_recipe(config: TrainConfig, spec: MemberSpec) -> Recipe:
    """The member's recipe with the run's overrides applied."""
    r = recipe_for(spec)
    return replace(
        r,
        epochs=config.epochs if config.epochs is not None else r.epochs,
        batch_size=config.batch_size or r.batch_size,
        lr=config.lr or r.lr,
        sbi_prob=config.sbi_prob if config.sbi_prob is not None else r.sbi_prob,
        blackout_prob=config.blackout_prob if config.blackout_prob is not None else r.blackout_prob,
        ema_decay=None if config.no_ema else (config.ema_decay or r.ema_decay),
        warmup_epochs=(
            config.warmup_epochs if config.warmup_epochs is not None else r.warmup_epochs
        ),
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
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        with _autocast(device, "bf16" if amp else "fp32"):
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


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: bf16 on CUDA and on CPUs with native bf16 (:data:`BF16_CPU_FLAGS`),
    else fp32; anything else as given (``bf16`` or ``fp32``)."""
    if precision not in PRECISIONS:
        raise TrainingError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision != AUTO_PRECISION:
        return precision
    if device.startswith("cuda"):
        return "bf16"
    return "bf16" if cpu_has_bf16() else "fp32"


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX-512 BF16)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    mkldnn = bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]
    return any(flag in flags for flag in BF16_CPU_FLAGS) and mkldnn


def _autocast(device: str, precision: str) -> Any:
    return torch.autocast(
        "cuda" if device.startswith("cuda") else "cpu",
        dtype=torch.bfloat16,
        enabled=precision == "bf16",
    )


def set_head_dropout(model: nn.Module, rate: float) -> int:
    """Sets every ``nn.Dropout`` of the model to ``rate`` (dropout holds no
    weights, so checkpoints are unaffected); returns how many were set."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = rate
            count += 1
    return count


class _StopSignal:
    """SIGTERM/SIGINT while training: finish the step, checkpoint, stop."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        import signal

        logger.warning("signal %d: stopping after this step (again to stop at once)", signum)
        self.received = signum
        # A second signal gets the handler there was before (Ctrl-C twice aborts).
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __exit__(self, *exc: object) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(
    config: TrainConfig,
    spec: MemberSpec,
    *,
    detect: DetectFn | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
    progress: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> TrainResult:
    """Train ``spec``'s architecture as ``config`` says (see module docstring).

    ``detect`` finds keypoints on crops that lack them (needed by SBI and the
    blackout's face parts; without it those fall back as documented).
    ``on_epoch`` is called after each epoch's checkpoint is written.
    ``clock`` (seconds) measures the time budget and the checkpoint interval.
    """
    from tqdm import tqdm

    recipe = resolve_recipe(config, spec)
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise TrainingError(f"device {device!r} was asked for but CUDA is not available")
    precision = resolve_precision(config.precision, device)
    paired = recipe.paired if config.paired is None else config.paired
    began = clock()
    torch.manual_seed(config.seed)

    samples = load_samples(config.data)
    train_samples = limit_balanced(select(samples, "train"), config.limit, config.seed)
    val_samples = limit_balanced(select(samples, "val"), config.val_limit, config.seed)
    if not train_samples or not val_samples:
        raise TrainingError(
            f"{config.data} needs both train and val samples "
            f"(found {len(train_samples)} and {len(val_samples)})"
        )
    leaks = split_leaks(train_samples + val_samples)
    if leaks:
        raise TrainingError(
            f"{len(leaks)} source(s) have crops in both train and val (e.g. {leaks[0]!r}); "
            "a source video and the fakes made from it must share a split"
        )
    if len({s.label for s in train_samples}) < 2 and recipe.sbi_prob == 0:
        raise TrainingError("the training split holds one class only; add data or use --sbi")
    if paired and not any(s.label == 1 for s in train_samples):
        raise TrainingError("paired batches need fake training crops; train with --no-paired")
    if paired and recipe.sbi_prob > 0:
        raise TrainingError(
            "SBI would turn the real crop of a real/fake pair into a pseudo-fake; "
            "use --sbi with --no-paired"
        )
    if detect is not None and (recipe.sbi_prob > 0 or recipe.blackout_prob > 0):
        train_samples = attach_keypoints(train_samples, detect, out / "keypoints.json")

    digest = data_digest(train_samples + val_samples)
    train_store = CropStore(
        [s.path for s in train_samples], recipe.input_size, cache_dir=config.cache_dir,
        digest=digest, progress=progress,
    )  # fmt: skip
    val_store = CropStore(
        [s.path for s in val_samples], recipe.input_size, cache_dir=config.cache_dir,
        digest=digest, progress=progress,
    )  # fmt: skip
    train_ds = FaceDataset(
        train_samples, recipe.input_size, spec.mean, spec.std, train=True, seed=config.seed,
        sbi_prob=recipe.sbi_prob, blackout_prob=recipe.blackout_prob,
        use_augment=config.augment, store=train_store,
    )  # fmt: skip
    val_ds = FaceDataset(
        val_samples, recipe.input_size, spec.mean, spec.std, train=False, store=val_store
    )
    val_loader = DataLoader(
        val_ds, batch_size=recipe.batch_size, shuffle=False, num_workers=config.num_workers
    )

    model = spec.build()
    if config.init_from is not None and not config.resume:
        from ensemble.weights import load_model

        model, manifest = load_model(spec, config.init_from)
        logger.info("starting from %s (weights %s)", config.init_from, manifest.weights_sha256)
    has_drop_path = apply_drop_path(model, recipe.drop_path) if recipe.drop_path else False
    if recipe.head_dropout is not None:
        set_head_dropout(model, recipe.head_dropout)
    model = model.to(device).to(memory_format=torch.channels_last)
    ema = Ema(model, recipe.ema_decay) if recipe.ema_decay else None
    optimizer = torch.optim.AdamW(_param_groups(model, recipe.weight_decay), lr=recipe.lr)
    steps_per_epoch = len(epoch_plan(train_samples, recipe.batch_size, config.seed, 0,
                                     paired=paired))  # fmt: skip
    total_steps = steps_per_epoch * recipe.epochs
    warmup = round(recipe.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, warmup, recipe.min_lr_ratio)
    )
    criterion = nn.BCEWithLogitsLoss()
    step_model: nn.Module = model
    if config.compile:
        step_model = torch.compile(model)  # type: ignore[assignment]

    # What must not change between a run and its resumption.
    settings: dict[str, Any] = {"recipe": asdict(recipe), "seed": config.seed,
                                "data_digest": digest, "augment": config.augment,
                                "precision": precision, "paired": paired}  # fmt: skip
    start_epoch, best_loss, best_epoch, bad_epochs = 0, math.inf, -1, 0
    # Batches done this epoch; its samples, correct calls, loss sum and seconds.
    done_steps, sums = 0, [0.0, 0.0, 0.0, 0.0]
    history: list[EpochLog] = []
    trained_seconds = 0.0
    images_seen = 0  # in finished epochs
    if not config.resume and (out / LAST).is_file():
        raise TrainingError(
            f"{out / LAST} holds a run already: continue it with --resume, or train into "
            "another --out (or delete that folder)"
        )
    if config.resume:
        last = out / LAST
        if not last.is_file():
            raise TrainingError(f"--resume: no checkpoint {last} to resume from")
        ckpt = torch.load(last, map_location=device, weights_only=True)
        if ckpt.get("version") != CHECKPOINT_VERSION or ckpt.get("member") != spec.name:
            raise TrainingError(f"{last} is not a checkpoint of {spec.name!r} from this version")
        changed = _changed_settings(ckpt["settings"], settings)
        if changed:
            raise TrainingError(
                f"--resume: {last} was trained with other settings ({', '.join(changed)}); "
                "resume with the original flags and data, or start a new run"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.model.load_state_dict(ckpt["ema"])
            ema.updates = int(ckpt["ema_updates"])
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        if cuda and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["cuda_rng"]])
        start_epoch, done_steps = int(ckpt["epoch"]), int(ckpt["step"])
        sums = [float(v) for v in ckpt["sums"]]
        images_seen = int(ckpt["images_seen"])
        best_loss, best_epoch = float(ckpt["best_loss"]), int(ckpt["best_epoch"])
        bad_epochs = int(ckpt["bad_epochs"])
        history = [EpochLog(**row) for row in ckpt["history"]]
        trained_seconds = float(ckpt.get("trained_seconds", 0.0))
        logger.info("resumed %s at epoch %d, batch %d", last, start_epoch + 1, done_steps)

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
        "amp": precision,
        "precision": precision,
        "cpu_bf16": cpu_has_bf16(),
        "paired": paired,
        "channels_last": True,
        "threads": torch.get_num_threads(),
        "steps_per_epoch": steps_per_epoch,
        "drop_path_applied": has_drop_path,
        "torch": torch.__version__,
    }  # fmt: skip

    def checkpoint(epoch: int, step: int) -> None:
        _save_atomic(
            {
                "version": CHECKPOINT_VERSION, "member": spec.name, "epoch": epoch,
                "step": step, "sums": list(sums),
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "ema": ema.model.state_dict() if ema is not None else None,
                "ema_updates": ema.updates if ema is not None else 0,
                "settings": settings,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if cuda else None,
                "best_loss": best_loss, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                "history": [asdict(h) for h in history],
                "trained_seconds": trained_seconds, "images_seen": images_seen,
            },
            out / LAST,
        )  # fmt: skip

    def info(status: str) -> dict[str, Any]:
        seen = images_seen + int(sums[0])
        return {**run_info, "best_epoch": best_epoch, "best_val_loss": best_loss,
                "status": status, "stopped_early": status == "early-stopped",
                "trained_seconds": round(trained_seconds, 1),
                "images_seen": seen,
                "images_per_second": round(seen / trained_seconds, 2) if trained_seconds else None,
                }  # fmt: skip

    budget = None if config.time_budget is None else config.time_budget * 60.0
    every = config.checkpoint_minutes * 60.0
    stopped_early = bad_epochs >= recipe.patience
    if stopped_early:
        logger.info("%s had stopped early at epoch %d; nothing to resume", out, start_epoch)
    status = "early-stopped" if stopped_early else "finished"
    interrupted = False
    last_saved = clock()
    slowest = 0.0  # seconds of the slowest training step so far (the budget's margin)
    validating = 0.0  # seconds the last validation and epoch checkpoint took
    with _StopSignal() as stop_signal:
        epoch = start_epoch
        while not stopped_early and epoch < recipe.epochs:
            train_ds.epoch = epoch
            plan = epoch_plan(train_samples, recipe.batch_size, config.seed, epoch, paired=paired)
            model.train()
            bar = tqdm(
                total=len(plan), initial=done_steps,
                desc=f"{spec.name} epoch {epoch + 1}/{recipe.epochs}",
                disable=not progress, leave=False,
            )  # fmt: skip
            step_started = clock()
            while done_steps < len(plan):
                batch = plan[done_steps]
                x, y = train_ds.batch(batch.indices, batch.slots, batch.aug_keys)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                target = smooth_targets(y, recipe.label_smoothing)
                with _autocast(device, precision):
                    logits = step_model(x).reshape(-1)
                loss = criterion(logits.float(), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update(model)
                done_steps += 1
                sums[0] += len(y)
                sums[1] += int(((logits.detach() >= 0) == (y >= 0.5)).sum())
                sums[2] += float(loss.detach()) * len(y)
                bar.update(1)
                bar.set_postfix(loss=f"{sums[2] / sums[0]:.4f}", acc=f"{sums[1] / sums[0]:.3f}")
                now = clock()
                trained_seconds += now - step_started
                sums[3] += now - step_started
                slowest = max(slowest, now - step_started)
                step_started = now
                # The margin: the slowest step, plus this epoch's validation
                # when the epoch is about to end.
                margin = slowest + (validating if done_steps == len(plan) else 0.0)
                out_of_time = budget is not None and (now - began) + margin > budget
                if stop_signal.received is not None or out_of_time:
                    # At the epoch's last batch too: a resumed run then
                    # validates the epoch from the restored sums.
                    checkpoint(epoch, done_steps)
                    _write_logs(out, history, info("interrupted"))
                    interrupted = True
                    logger.info(
                        "%s: %s; checkpoint at epoch %d, batch %d/%d (resume with --resume)",
                        spec.name, "time budget reached" if out_of_time else "signal",
                        epoch + 1, done_steps, len(plan),
                    )  # fmt: skip
                    break
                if now - last_saved >= every and done_steps < len(plan):
                    checkpoint(epoch, done_steps)
                    _write_logs(out, history, info("running"))
                    last_saved = step_started = clock()
            bar.close()
            if interrupted:
                break
            validation_started = clock()

            evaluated = ema.model if ema is not None else model
            val_logits, val_labels = predict(evaluated, val_loader, device, precision == "bf16")
            val_loss, val_acc, val_auc = _val_metrics(val_logits, val_labels)
            row = EpochLog(
                epoch=epoch + 1, train_loss=sums[2] / max(sums[0], 1),
                train_acc=sums[1] / max(sums[0], 1), val_loss=val_loss, val_acc=val_acc,
                val_auc=val_auc, lr=float(scheduler.get_last_lr()[0]),
                seconds=sums[3],
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
            stopped_early = bad_epochs >= recipe.patience
            images_seen += int(sums[0])
            epoch, done_steps, sums = epoch + 1, 0, [0.0, 0.0, 0.0, 0.0]
            checkpoint(epoch, 0)
            last_saved = clock()
            validating = last_saved - validation_started
            _write_logs(out, history, info("early-stopped" if stopped_early else "running"))
            if on_epoch is not None:
                on_epoch(row)
            if stopped_early:
                status = "early-stopped"
                logger.info("early stop after epoch %d (best %d)", epoch, best_epoch)
            work_left = not stopped_early and epoch < recipe.epochs
            # Another epoch's first step must fit in the budget as well.
            out_of_time = budget is not None and (last_saved - began) + slowest > budget
            if work_left and (stop_signal.received is not None or out_of_time):
                interrupted = True
                logger.info("%s: stopped after epoch %d (resume with --resume)", spec.name, epoch)
                break
    if interrupted:
        status = "interrupted"
    if not history and not interrupted:
        raise TrainingError("no epoch was run (is --epochs 0, or was the run already finished?)")
    _write_logs(out, history, info(status))
    return TrainResult(out, best_epoch, best_loss, status == "early-stopped", history,
                       interrupted=interrupted)  # fmt: skip


def _changed_settings(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Names of the settings that differ between a checkpoint and this run."""
    changed = []
    for key, value in now.items():
        if key == "recipe":
            old = saved.get("recipe", {})
            changed += [f"{k} {old.get(k)!r} -> {v!r}" for k, v in value.items() if old.get(k) != v]
        elif key == "data_digest" and saved.get(key) != value:
            changed.append("data")
        elif saved.get(key) != value:
            changed.append(f"{key} {saved.get(key)!r} -> {value!r}")
    return changed


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


def load_best(out: Path, spec: MemberSpec) -> tuple[nn.Module, int]:
    """The best checkpoint's model (eval mode) and its input size."""
    path = out / BEST
    if not path.is_file():
        raise TrainingError(f"no {BEST} in {out}; train first")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = spec.build()
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), int(ckpt["input_size"])
