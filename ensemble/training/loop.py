"""One training loop for every member.

``train(config, spec)`` reads the dataset, decodes every crop once into
memory at the training size (:class:`~ensemble.training.batches.CropStore`,
cached on disk), builds the member's architecture, and trains it with the
recipe's settings: AdamW, warm-up then cosine schedule, label smoothing, drop
path and dropout (where the architecture has them), an optional EMA of the
weights, bf16 autocast where the hardware computes bf16 (CUDA, or a CPU with
AMX / AVX-512 BF16; fp32 elsewhere) with channels_last everywhere, paired
real/fake batches or balanced sampling, validation every epoch and early
stopping on validation log loss.

The loop is in parts: ``_prepare_data`` (samples, checks, crop stores),
``_build`` (model, EMA, optimiser, schedule), :class:`RunState` (what a
checkpoint holds besides the weights; ``_resume`` restores it),
:func:`train_one_epoch` and :func:`validate`; :func:`train` strings them
together. Batches are in :mod:`ensemble.training.batches`, the optimisation
parts in :mod:`ensemble.training.optim`, the run folder's logs in
:mod:`ensemble.training.runfiles`.

Runs span sessions: ``time_budget`` stops cleanly, ``last.pt`` is written at
least every ``checkpoint_minutes`` and at every epoch's end, SIGTERM/SIGINT
stop after the current step, and ``resume`` continues mid-epoch exactly. The
batches of an epoch are a function of ``(seed, epoch)``
(:func:`~ensemble.training.batches.epoch_plan`), every random choice about a
sample (SBI, blackout, augmentation) of ``(seed, epoch, slot)``, and the
checkpoint holds the model, optimizer, scheduler, EMA, torch RNG state, the
batch reached, the epoch's running sums, early-stopping state and history.
``run.json`` records the command, the data digest, the code version, every
setting and the measured throughput.

Outputs in ``out``: ``last.pt``, ``best.pt`` (weights as evaluated: the EMA's
when EMA is on), ``val_predictions.csv`` (best epoch), ``log.csv``,
``log.json``, ``curves.png``, ``run.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ensemble.errors import IncompatibleCheckpointError, TrainingError, TrusttraceError
from ensemble.evaluation import log_loss, roc_auc
from ensemble.registry import MemberSpec
from ensemble.training.batches import CropStore, FaceDataset, epoch_plan
from ensemble.training.data import (
    DetectFn,
    Sample,
    attach_keypoints,
    data_digest,
    dataset_root,
    limit_balanced,
    load_samples,
    select,
    split_leaks,
)
from ensemble.training.optim import (
    Ema,
    apply_drop_path,
    param_groups,
    set_head_dropout,
    smooth_targets,
    warmup_cosine,
)
from ensemble.training.recipes import Recipe, recipe_for
from ensemble.training.runfiles import (
    EpochLog,
    code_version,
    read_run_info,
    save_atomic,
    save_best,
    write_logs,
)
from ensemble.training.teacher import check_coverage, check_share, load_teacher

logger = logging.getLogger(__name__)

# 2: EMA update count, the settings the run was started with.
# 3: mid-epoch state (batches done, running sums), precision, pairing.
CHECKPOINT_VERSION = 3
LAST = "last.pt"
BEST = "best.pt"
# --device auto: CUDA when available, else the CPU.
AUTO_DEVICE = "auto"
# --precision auto: bf16 autocast where the hardware computes in bf16, else fp32.
AUTO_PRECISION = "auto"
PRECISIONS = (AUTO_PRECISION, "bf16", "fp32")
DEFAULT_CHECKPOINT_MINUTES = 10.0
# CPU flags under which oneDNN runs bf16 convolutions natively (AMX tiles or
# AVX-512 BF16 dot products); without them bf16 autocast is emulated and slower.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


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
    # Stochastic depth rate and AdamW weight decay (None: the recipe's).
    drop_path: float | None = None
    weight_decay: float | None = None
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
    # What a new run (not a resume) starts from: a weights folder with the
    # member installed, a run folder (its best.pt) or a checkpoint file.
    init_from: Path | None = None
    # torch.compile the training model (measured in bench/train_speed.py).
    compile: bool = False
    # Paired real/fake batches (None: the recipe's choice).
    paired: bool | None = None
    # Knowledge distillation (ensemble.training.teacher): score tables of the
    # training crops, the weights folder whose ensemble.json combines them,
    # and the teacher's share in each target (0: no teacher).
    teacher_scores: tuple[Path, ...] = ()
    teacher_weights: Path | None = None
    distill: float = 0.0


@dataclass
class TrainResult:
    out: Path
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    history: list[EpochLog] = field(default_factory=list)
    # Stopped by the time budget or a signal; ``--resume`` continues it.
    interrupted: bool = False


# --- Devices, precision, prediction ---------------------------------------


def resolve_device(device: str) -> str:
    """``"auto"``: CUDA when there is one, else the CPU; anything else as given."""
    if device == AUTO_DEVICE:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_recipe(config: TrainConfig, spec: MemberSpec) -> Recipe:
    """The member's recipe with the run's overrides applied."""
    r = recipe_for(spec)
    if config.drop_path is not None and not 0.0 <= config.drop_path < 1.0:
        raise TrainingError(f"--drop-path must be in [0, 1), got {config.drop_path}")
    if config.weight_decay is not None and not config.weight_decay >= 0.0:
        raise TrainingError(f"--weight-decay must be 0 or more, got {config.weight_decay}")
    # Checked, not read with `or`: a 0 used to stand for "the recipe's"
    # (--ema-decay 0 trained with 0.999, --patience 0 with 3).
    if config.batch_size is not None and config.batch_size < 1:
        raise TrainingError(f"--batch-size must be 1 or more, got {config.batch_size}")
    if config.lr is not None and not 0.0 < config.lr < math.inf:
        raise TrainingError(f"--lr must be a positive number, got {config.lr}")
    if config.ema_decay is not None and not 0.0 <= config.ema_decay < 1.0:
        raise TrainingError(
            f"--ema-decay must be in [0, 1), got {config.ema_decay} (--no-ema turns it off)"
        )
    if config.patience is not None and config.patience < 1:
        raise TrainingError(f"--patience must be 1 epoch or more, got {config.patience}")
    if config.input_size is not None and config.input_size < 32:
        raise TrainingError(f"--input-size must be 32 pixels or more, got {config.input_size}")

    def given(value: Any, default: Any) -> Any:
        return default if value is None else value

    return replace(
        r,
        epochs=config.epochs if config.epochs is not None else r.epochs,
        batch_size=given(config.batch_size, r.batch_size),
        lr=given(config.lr, r.lr),
        sbi_prob=config.sbi_prob if config.sbi_prob is not None else r.sbi_prob,
        blackout_prob=config.blackout_prob if config.blackout_prob is not None else r.blackout_prob,
        ema_decay=None if config.no_ema else given(config.ema_decay, r.ema_decay),
        warmup_epochs=(
            config.warmup_epochs if config.warmup_epochs is not None else r.warmup_epochs
        ),
        patience=given(config.patience, r.patience),
        input_size=given(config.input_size, r.input_size),
        drop_path=config.drop_path if config.drop_path is not None else r.drop_path,
        weight_decay=config.weight_decay if config.weight_decay is not None else r.weight_decay,
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


# --- The loop's parts ---------------------------------------------------------


@dataclass(frozen=True)
class _Data:
    train_samples: list[Sample]
    val_samples: list[Sample]
    train_ds: FaceDataset
    val_loader: DataLoader[Any]
    digest: str
    keep_pairs: bool  # how --limit drew the training samples
    # The teacher's share and the digest of its targets (None: no teacher).
    teacher_record: dict[str, Any] | None = None


def _prepare_data(
    config: TrainConfig,
    spec: MemberSpec,
    recipe: Recipe,
    *,
    paired: bool,
    detect: DetectFn | None,
    progress: bool,
) -> _Data:
    """The run's samples, checked (both splits, no source in both, classes,
    pairing), with their crops decoded into memory."""
    samples = load_samples(config.data)
    # Paired runs keep the kept fakes' originals (run.json: limit_keeps_pairs);
    # a resumed run draws as it was first drawn (runs from before the flag
    # drew reals and fakes apart).
    keep_pairs = paired
    if config.resume and (config.out / "run.json").is_file():
        keep_pairs = bool(read_run_info(config.out).get("limit_keeps_pairs"))
    train_samples = limit_balanced(
        select(samples, "train"), config.limit, config.seed, keep_pairs=keep_pairs
    )
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
    teacher, teacher_record = _teacher(config, train_samples)
    if detect is not None and (recipe.sbi_prob > 0 or recipe.blackout_prob > 0):
        train_samples = attach_keypoints(train_samples, detect, config.out / "keypoints.json")

    digest = data_digest(train_samples + val_samples)

    def store(of: Sequence[Sample]) -> CropStore:
        return CropStore(
            [s.path for s in of],
            recipe.input_size,
            cache_dir=config.cache_dir,
            digest=digest,
            progress=progress,
        )

    train_ds = FaceDataset(
        train_samples,
        recipe.input_size,
        spec.mean,
        spec.std,
        train=True,
        seed=config.seed,
        sbi_prob=recipe.sbi_prob,
        blackout_prob=recipe.blackout_prob,
        use_augment=config.augment,
        store=store(train_samples),
        teacher=teacher,
        distill=config.distill,
    )
    val_ds = FaceDataset(
        val_samples, recipe.input_size, spec.mean, spec.std, train=False, store=store(val_samples)
    )
    val_loader = DataLoader(
        val_ds, batch_size=recipe.batch_size, shuffle=False, num_workers=config.num_workers
    )
    return _Data(
        train_samples, val_samples, train_ds, val_loader, digest, keep_pairs, teacher_record
    )


def _teacher(
    config: TrainConfig, train_samples: Sequence[Sample]
) -> tuple[dict[Path, float] | None, dict[str, Any] | None]:
    """The teacher's probability of each training crop and what run.json
    and a resume record of it; ``(None, None)`` without a teacher."""
    if not config.teacher_scores:
        if config.distill:
            raise TrainingError("--distill needs the teacher's scores (--teacher SCORES...)")
        return None, None
    share = check_share(config.distill)
    if config.teacher_weights is None:
        raise TrainingError("--teacher needs the weights folder whose ensemble.json combines them")
    root = dataset_root(config.data)
    teacher = load_teacher(config.teacher_scores, config.teacher_weights, root)
    check_coverage(teacher, train_samples)
    ours = {s.path: teacher[s.path].probability for s in train_samples}
    # Named relative to the dataset, as the data digest does not depend on
    # where the dataset lies: a resume with --data spelled otherwise matches.
    digest = hashlib.sha256(
        "\n".join(
            f"{p.relative_to(root).as_posix()},{v:.9g}" for p, v in sorted(ours.items())
        ).encode()
    ).hexdigest()
    return ours, {
        "share": share,
        "digest": digest,
        "scores": [str(p) for p in config.teacher_scores],
        "weights": str(config.teacher_weights),
    }


@dataclass
class _Trainee:
    """The model and what updates it."""

    model: nn.Module
    # What a training step calls: the model, or its torch.compile'd wrapper.
    step_model: nn.Module
    ema: Ema | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int
    drop_path_applied: bool

    @property
    def evaluated(self) -> nn.Module:
        """What validation, best.pt and export use: the EMA when there is one."""
        return self.ema.model if self.ema is not None else self.model


def _build(
    config: TrainConfig,
    spec: MemberSpec,
    recipe: Recipe,
    train_samples: Sequence[Sample],
    *,
    device: str,
    paired: bool,
) -> _Trainee:
    """The member's model (from ``init_from`` for a new run that asks), its
    EMA, AdamW and the warm-up/cosine schedule over the run's steps."""
    model = spec.build()
    if config.init_from is not None and not config.resume:
        model = initial_model(spec, config.init_from)
    drop_path_applied = apply_drop_path(model, recipe.drop_path) if recipe.drop_path else False
    if recipe.head_dropout is not None:
        set_head_dropout(model, recipe.head_dropout)
    model = model.to(device).to(memory_format=torch.channels_last)
    ema = Ema(model, recipe.ema_decay) if recipe.ema_decay else None
    optimizer = torch.optim.AdamW(param_groups(model, recipe.weight_decay), lr=recipe.lr)
    plan = epoch_plan(train_samples, recipe.batch_size, config.seed, 0, paired=paired)
    steps_per_epoch = len(plan)
    warmup = round(recipe.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        warmup_cosine(steps_per_epoch * recipe.epochs, warmup, recipe.min_lr_ratio),
    )
    step_model: nn.Module = model
    if config.compile:
        step_model = torch.compile(model)  # type: ignore[assignment]
    return _Trainee(
        model, step_model, ema, optimizer, scheduler, steps_per_epoch, drop_path_applied
    )


def _new_sums() -> list[float]:
    # The epoch so far: samples, correct calls, loss sum, seconds.
    return [0.0, 0.0, 0.0, 0.0]


@dataclass
class RunState:
    """Where a run stands, beside its weights: what ``last.pt`` holds and a
    resumed run restores."""

    epoch: int = 0  # epochs finished
    done_steps: int = 0  # batches done in the current epoch
    sums: list[float] = field(default_factory=_new_sums)
    history: list[EpochLog] = field(default_factory=list)
    best_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    trained_seconds: float = 0.0
    images_seen: int = 0  # in finished epochs
    # The last validation's seconds: the time budget's margin at the end of
    # a resumed session's first epoch, before it has validated itself.
    validation_seconds: float = 0.0

    def next_epoch(self) -> None:
        self.images_seen += int(self.sums[0])
        self.epoch, self.done_steps, self.sums = self.epoch + 1, 0, _new_sums()

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.done_steps,
            "sums": list(self.sums),
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": [asdict(h) for h in self.history],
            "trained_seconds": self.trained_seconds,
            "images_seen": self.images_seen,
            "validation_seconds": self.validation_seconds,
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> RunState:
        return cls(
            epoch=int(ckpt["epoch"]),
            done_steps=int(ckpt["step"]),
            sums=[float(v) for v in ckpt["sums"]],
            history=[EpochLog(**row) for row in ckpt["history"]],
            best_loss=float(ckpt["best_loss"]),
            best_epoch=int(ckpt["best_epoch"]),
            bad_epochs=int(ckpt["bad_epochs"]),
            trained_seconds=float(ckpt.get("trained_seconds", 0.0)),
            images_seen=int(ckpt["images_seen"]),
            validation_seconds=float(ckpt.get("validation_seconds", 0.0)),
        )


def _save_checkpoint(
    path: Path,
    spec: MemberSpec,
    trainee: _Trainee,
    state: RunState,
    settings: dict[str, Any],
    *,
    cuda: bool,
) -> None:
    ema = trainee.ema
    save_atomic(
        {
            "version": CHECKPOINT_VERSION,
            "member": spec.name,
            **state.to_checkpoint(),
            "model": trainee.model.state_dict(),
            "optimizer": trainee.optimizer.state_dict(),
            "scheduler": trainee.scheduler.state_dict(),
            "ema": ema.model.state_dict() if ema is not None else None,
            "ema_updates": ema.updates if ema is not None else 0,
            "settings": settings,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if cuda else None,
        },
        path,
    )


def _resume(
    path: Path, spec: MemberSpec, trainee: _Trainee, settings: dict[str, Any], device: str
) -> RunState:
    """Restores ``trainee`` and the RNGs from ``path`` and returns the run's
    state; refuses a checkpoint of another member, version or settings."""
    if not path.is_file():
        raise TrainingError(f"--resume: no checkpoint {path} to resume from")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    if ckpt.get("version") != CHECKPOINT_VERSION or ckpt.get("member") != spec.name:
        raise TrainingError(f"{path} is not a checkpoint of {spec.name!r} from this version")
    changed = _changed_settings(ckpt["settings"], settings)
    if changed:
        raise TrainingError(
            f"--resume: {path} was trained with other settings ({', '.join(changed)}); "
            "resume with the original flags and data, or start a new run"
        )
    trainee.model.load_state_dict(ckpt["model"])
    trainee.optimizer.load_state_dict(ckpt["optimizer"])
    trainee.scheduler.load_state_dict(ckpt["scheduler"])
    if trainee.ema is not None and ckpt.get("ema") is not None:
        trainee.ema.model.load_state_dict(ckpt["ema"])
        trainee.ema.updates = int(ckpt["ema_updates"])
    torch.set_rng_state(ckpt["torch_rng"].cpu())
    if device.startswith("cuda") and ckpt.get("cuda_rng") is not None:
        torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["cuda_rng"]])
    state = RunState.from_checkpoint(ckpt)
    logger.info("resumed %s at epoch %d, batch %d", path, state.epoch + 1, state.done_steps)
    return state


@dataclass
class _Timing:
    """The clock of a run: its time budget and checkpoint interval."""

    clock: Callable[[], float]
    began: float
    budget: float | None  # seconds
    every: float  # seconds between mid-epoch checkpoints
    last_saved: float
    slowest: float = 0.0  # seconds of the slowest training step so far (the budget's margin)
    validating: float = 0.0  # seconds the last validation and epoch checkpoint took
    val_batches: int = 0  # batches a validation runs
    step_seconds: float = 0.0  # training steps' seconds this session, and their count
    steps: int = 0

    def out_of_time(self, now: float, margin: float) -> bool:
        return self.budget is not None and (now - self.began) + margin > self.budget

    def validation_margin(self) -> float:
        """What the validation at an epoch's end will take: the last one's
        seconds, or, before any has run (a new run's first epoch; a run
        from before these were kept), its batches at a third of the mean
        training step each (a forward pass, against a training step's
        forward and backward; measured, B7's validation takes less). It was
        0 then, so a budget nearly spent still started a validation (about 5
        minutes for B7 on two cores) after the epoch's last checkpoint."""
        mean_step = self.step_seconds / self.steps if self.steps else self.slowest
        return self.validating or self.val_batches * mean_step / 3.0


def train_one_epoch(
    trainee: _Trainee,
    data: _Data,
    recipe: Recipe,
    state: RunState,
    *,
    device: str,
    precision: str,
    paired: bool,
    seed: int,
    timing: _Timing,
    stop: _StopSignal,
    save: Callable[[str], None],
    label: str,
    progress: bool,
) -> str | None:
    """Trains ``state.epoch`` from batch ``state.done_steps`` to its end, or
    until the time budget or a signal, when it checkpoints (``save``) and
    returns why it stopped; None when the epoch is done. A mid-epoch
    checkpoint goes out at least every ``timing.every`` seconds."""
    from tqdm import tqdm

    data.train_ds.epoch = state.epoch
    plan = epoch_plan(data.train_samples, recipe.batch_size, seed, state.epoch, paired=paired)
    trainee.model.train()
    bar = tqdm(
        total=len(plan), initial=state.done_steps, desc=label, disable=not progress, leave=False
    )
    sums = state.sums
    step_started = timing.clock()
    try:
        while state.done_steps < len(plan):
            batch = plan[state.done_steps]
            x, y, t = data.train_ds.batch(batch.indices, batch.slots, batch.aug_keys)
            x, y, t = (v.to(device, non_blocking=True) for v in (x, y, t))
            loss, logits = _step(trainee, recipe, x, t, device=device, precision=precision)
            state.done_steps += 1
            sums[0] += len(y)
            sums[1] += int(((logits >= 0) == (y >= 0.5)).sum())
            sums[2] += loss * len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{sums[2] / sums[0]:.4f}", acc=f"{sums[1] / sums[0]:.3f}")
            now = timing.clock()
            state.trained_seconds += now - step_started
            sums[3] += now - step_started
            timing.slowest = max(timing.slowest, now - step_started)
            timing.step_seconds += now - step_started
            timing.steps += 1
            step_started = now
            # The margin: the slowest step, plus this epoch's validation when
            # the epoch is about to end.
            ending = state.done_steps == len(plan)
            margin = timing.slowest + (timing.validation_margin() if ending else 0.0)
            out_of_time = timing.out_of_time(now, margin)
            if stop.received is not None or out_of_time:
                # At the epoch's last batch too: a resumed run then validates
                # the epoch from the restored sums.
                reason = "time budget reached" if out_of_time else "signal"
                save("interrupted")
                logger.info(
                    "%s: %s; checkpoint at epoch %d, batch %d/%d (resume with --resume)",
                    label,
                    reason,
                    state.epoch + 1,
                    state.done_steps,
                    len(plan),
                )
                return reason
            if now - timing.last_saved >= timing.every and not ending:
                save("running")
                timing.last_saved = step_started = timing.clock()
    finally:
        bar.close()
    return None


def _step(
    trainee: _Trainee, recipe: Recipe, x: Tensor, y: Tensor, *, device: str, precision: str
) -> tuple[float, Tensor]:
    """One optimisation step on a batch with targets ``y`` (labels, or soft
    targets from a teacher); returns its loss and detached logits."""
    target = smooth_targets(y, recipe.label_smoothing)
    with _autocast(device, precision):
        logits = trainee.step_model(x).reshape(-1)
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
    trainee.optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    if recipe.grad_clip:
        nn.utils.clip_grad_norm_(trainee.model.parameters(), recipe.grad_clip)
    trainee.optimizer.step()
    trainee.scheduler.step()
    if trainee.ema is not None:
        trainee.ema.update(trainee.model)
    return float(loss.detach()), logits.detach()


def validate(
    trainee: _Trainee,
    data: _Data,
    recipe: Recipe,
    state: RunState,
    spec: MemberSpec,
    out: Path,
    *,
    device: str,
    precision: str,
) -> EpochLog:
    """Validates the epoch just trained (the EMA's weights when EMA is on),
    appends its log row, keeps ``best.pt`` and ``val_predictions.csv`` on
    a better validation log loss and counts early stopping's bad epochs."""
    evaluated = trainee.evaluated
    val_logits, val_labels = predict(evaluated, data.val_loader, device, precision == "bf16")
    val_loss, val_acc, val_auc = _val_metrics(val_logits, val_labels)
    sums = state.sums
    row = EpochLog(
        epoch=state.epoch + 1,
        train_loss=sums[2] / max(sums[0], 1),
        train_acc=sums[1] / max(sums[0], 1),
        val_loss=val_loss,
        val_acc=val_acc,
        val_auc=val_auc,
        lr=float(trainee.scheduler.get_last_lr()[0]),
        seconds=sums[3],
    )
    state.history.append(row)
    logger.info(
        "%s epoch %d: train loss %.4f acc %.3f, val loss %.4f acc %.3f auc %s",
        spec.name,
        row.epoch,
        row.train_loss,
        row.train_acc,
        val_loss,
        val_acc,
        "n/a" if val_auc is None else f"{val_auc:.4f}",
    )
    if val_loss < state.best_loss:
        state.best_loss, state.best_epoch, state.bad_epochs = val_loss, row.epoch, 0
        best = {
            "member": spec.name,
            "epoch": row.epoch,
            "input_size": recipe.input_size,
            "state_dict": evaluated.state_dict(),
        }
        save_best(best, out / BEST, out / "val_predictions.csv", data.val_samples, val_logits)
    else:
        state.bad_epochs += 1
    return row


def _run_info(
    config: TrainConfig,
    spec: MemberSpec,
    recipe: Recipe,
    data: _Data,
    trainee: _Trainee,
    *,
    device: str,
    precision: str,
    paired: bool,
) -> dict[str, Any]:
    """What ``run.json`` says about the run besides its progress."""

    def classes(samples: Sequence[Sample]) -> dict[str, int]:
        return {
            "real": sum(s.label == 0 for s in samples),
            "fake": sum(s.label == 1 for s in samples),
        }

    return {
        "member": spec.name,
        "command": config.command,
        "code_version": code_version(),
        "data": str(config.data),
        "data_digest": data.digest,
        "n_train": classes(data.train_samples),
        "n_val": classes(data.val_samples),
        "recipe": asdict(recipe),
        "config": {k: _jsonable(v) for k, v in asdict(config).items()},
        "device": device,
        "amp": precision,
        "precision": precision,
        "cpu_bf16": cpu_has_bf16(),
        "paired": paired,
        # Knowledge distillation: the teacher's share and its scores' digest.
        "teacher": data.teacher_record,
        # How --limit chose the training samples (export chooses them again).
        "limit_keeps_pairs": data.keep_pairs,
        "channels_last": True,
        "threads": torch.get_num_threads(),
        "steps_per_epoch": trainee.steps_per_epoch,
        "drop_path_applied": trainee.drop_path_applied,
        "torch": torch.__version__,
    }


def _jsonable(value: Any) -> Any:
    """A config value as JSON holds it (paths as strings)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _progress_info(state: RunState, status: str) -> dict[str, Any]:
    seen = state.images_seen + int(state.sums[0])
    seconds = state.trained_seconds
    return {
        "best_epoch": state.best_epoch,
        "best_val_loss": state.best_loss,
        "status": status,
        "stopped_early": status == "early-stopped",
        "trained_seconds": round(seconds, 1),
        "images_seen": seen,
        "images_per_second": round(seen / seconds, 2) if seconds else None,
    }


# --- The loop -------------------------------------------------------------------


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
    recipe = resolve_recipe(config, spec)
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device {device!r} was asked for but CUDA is not available")
    precision = resolve_precision(config.precision, device)
    paired = recipe.paired if config.paired is None else config.paired
    began = clock()
    torch.manual_seed(config.seed)

    data = _prepare_data(config, spec, recipe, paired=paired, detect=detect, progress=progress)
    trainee = _build(config, spec, recipe, data.train_samples, device=device, paired=paired)
    # What must not change between a run and its resumption.
    settings: dict[str, Any] = {
        "recipe": asdict(recipe),
        "seed": config.seed,
        "data_digest": data.digest,
        "augment": config.augment,
        "precision": precision,
        "paired": paired,
    }
    if data.teacher_record is not None:
        # Only with a teacher, so runs from before distillation still resume.
        settings["teacher"] = {k: data.teacher_record[k] for k in ("share", "digest")}
    last = out / LAST
    if not config.resume and last.is_file():
        raise TrainingError(
            f"{last} holds a run already: continue it with --resume, or train into "
            "another --out (or delete that folder)"
        )
    state = _resume(last, spec, trainee, settings, device) if config.resume else RunState()
    run_info = _run_info(
        config, spec, recipe, data, trainee, device=device, precision=precision, paired=paired
    )
    run_info["init"] = _init_record(config, spec, out)

    def save(status: str) -> None:
        """``last.pt`` and the logs, with the run's status."""
        _save_checkpoint(last, spec, trainee, state, settings, cuda=device.startswith("cuda"))
        write_logs(out, state.history, {**run_info, **_progress_info(state, status)})

    budget = None if config.time_budget is None else config.time_budget * 60.0
    timing = _Timing(clock, began, budget, config.checkpoint_minutes * 60.0, clock())
    timing.validating, timing.val_batches = state.validation_seconds, len(data.val_loader)
    stopped_early = state.bad_epochs >= recipe.patience
    if stopped_early:
        logger.info("%s had stopped early at epoch %d; nothing to resume", out, state.epoch)
    interrupted = False
    with _StopSignal() as stop:
        while not stopped_early and state.epoch < recipe.epochs:
            stopped = train_one_epoch(
                trainee,
                data,
                recipe,
                state,
                device=device,
                precision=precision,
                paired=paired,
                seed=config.seed,
                timing=timing,
                stop=stop,
                save=save,
                label=f"{spec.name} epoch {state.epoch + 1}/{recipe.epochs}",
                progress=progress,
            )
            if stopped is not None:
                interrupted = True
                break
            validation_started = clock()
            row = validate(
                trainee, data, recipe, state, spec, out, device=device, precision=precision
            )
            state.validation_seconds = clock() - validation_started
            stopped_early = state.bad_epochs >= recipe.patience
            state.next_epoch()
            save("early-stopped" if stopped_early else "running")
            timing.last_saved = clock()
            timing.validating = timing.last_saved - validation_started
            if on_epoch is not None:
                on_epoch(row)
            if stopped_early:
                logger.info("early stop after epoch %d (best %d)", state.epoch, state.best_epoch)
            work_left = not stopped_early and state.epoch < recipe.epochs
            # Another epoch's first step must fit in the budget as well.
            if work_left and (
                stop.received is not None or timing.out_of_time(timing.last_saved, timing.slowest)
            ):
                interrupted = True
                logger.info(
                    "%s: stopped after epoch %d (resume with --resume)", spec.name, state.epoch
                )
                break
    if not state.history and not interrupted:
        raise TrainingError("no epoch was run (is --epochs 0, or was the run already finished?)")
    status = "interrupted" if interrupted else "early-stopped" if stopped_early else "finished"
    write_logs(out, state.history, {**run_info, **_progress_info(state, status)})
    return TrainResult(
        out,
        state.best_epoch,
        state.best_loss,
        status == "early-stopped",
        state.history,
        interrupted=interrupted,
    )


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
    if "teacher" in saved and "teacher" not in now:
        changed.append(f"teacher {saved['teacher']!r} -> None")
    return changed


def initial_model(spec: MemberSpec, source: Path) -> nn.Module:
    """The model a new run starts from: ``source`` is a weights folder with
    the member installed, a run folder (its ``best.pt``, the weights as
    validated) or a checkpoint file (``best.pt`` or ``last.pt``). A run goes on
    from another run's weights without exporting them first, which for the
    larger members takes longer than an epoch's validation."""
    path = source / BEST if (source / BEST).is_file() else source
    if not path.is_file():
        from ensemble.weights import load_model

        model, manifest = load_model(spec, source)
        logger.info("starting from %s (weights %s)", source, manifest.weights_sha256)
        return model
    from ensemble.weights import normalize_checkpoint, read_checkpoint

    try:
        ckpt = read_checkpoint(path)
    except IncompatibleCheckpointError as exc:  # any unreadable file gets the same refusal
        raise TrainingError(f"{path} is not a training checkpoint: {exc}") from exc
    # best.pt keeps the validated weights as state_dict; last.pt keeps the
    # trained ones as model and the EMA (what was validated) apart. A
    # published checkpoint (selimsef's, polimi's) is read as an import would.
    weights = ckpt["ema"] if isinstance(ckpt, dict) and ckpt.get("ema") else ckpt
    try:
        state = normalize_checkpoint(weights)
    except IncompatibleCheckpointError as exc:
        raise TrainingError(f"{path} is not a training checkpoint (no weights in it)") from exc
    member = ckpt.get("member") if isinstance(ckpt, dict) else None
    if member is not None and member != spec.name:
        raise TrainingError(f"{path} holds {member} weights, not {spec.name}")
    model = spec.build()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise TrainingError(f"{path} does not fit {spec.name}: {exc}") from exc
    logger.info("starting from %s (epoch %s)", path, ckpt.get("epoch"))
    return model


def describe_init(spec: MemberSpec, source: Path) -> dict[str, Any]:
    """What a run started from, for ``run.json`` and the exported manifest:
    the installed member's weights hash, or the checkpoint's path, epoch and,
    for a grown one (:mod:`ensemble.training.grow`), what it was grown from."""
    record: dict[str, Any] = {"source": str(source)}
    path = source / BEST if (source / BEST).is_file() else source
    if not path.is_file():
        from ensemble.weights import read_manifest

        try:
            record["weights_sha256"] = read_manifest(source, spec.name).weights_sha256
        except TrusttraceError as exc:
            record["unreadable"] = str(exc)
        return record
    from ensemble.weights import read_checkpoint

    try:
        ckpt = read_checkpoint(path)
    except IncompatibleCheckpointError as exc:  # the record says so; the run already loaded it
        record["unreadable"] = str(exc)
        return record
    if isinstance(ckpt, dict):
        for key in ("epoch", "grown_from", "soup_of"):
            if ckpt.get(key) is not None:
                record[key] = ckpt[key]
    return record


def _init_record(config: TrainConfig, spec: MemberSpec, out: Path) -> dict[str, Any] | None:
    """The run's start (:func:`describe_init`); a resumed run keeps the one
    its first command recorded."""
    if config.resume:
        try:
            previous = json.loads((out / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(previous, dict):
            return None
        init = previous.get("init")
        if isinstance(init, dict):
            return init
        # A run from before run.json kept "init": its first command's source.
        source = (previous.get("config") or {}).get("init_from")
        return {"source": source, "described": False} if source else None
    return describe_init(spec, config.init_from) if config.init_from is not None else None


def load_best(out: Path, spec: MemberSpec) -> tuple[nn.Module, int]:
    """The best checkpoint's model (eval mode) and its input size."""
    path = out / BEST
    if not path.is_file():
        raise TrainingError(f"no {BEST} in {out}; train first")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = spec.build()
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), int(ckpt["input_size"])
