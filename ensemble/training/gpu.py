"""Training on a CUDA GPU, with the crops and their augmentation on the device.

The CPU loop (:mod:`ensemble.training.loop`) decodes and augments each crop
in Python, a few hundred images a second at best: far below what one GPU
trains. Here every crop of the dataset is decoded once into a single uint8
tensor on the device, and batches are augmented there as whole tensors, with
the probabilities and ranges of :mod:`ensemble.training.augment`: affine warp
(``grid_sample``), JPEG (torchvision's codecs: nvJPEG on a CUDA device),
downscale, horizontal flip, colour jitter, noise, blur and cutout. Batches are
the loop's real/fake pairs (a fake beside the real it was made from, both
under one draw of every augmentation). The B7's SSIM-mask guided blackout is
computed from the pair on the device: ``(1 - SSIM) / 2`` of the two crops as
they are (most dfdc_faces pairs are the same frame; no keypoint alignment),
the region at or above ``ssim_blackout.DIFF_THRESHOLD`` after a 3x3 opening,
and the side of a random line through its centre blacked out.

A run has a wall-clock budget and an image budget; the learning rate (linear
warm-up, then cosine) follows whichever of the two is further along, so a run
always completes its schedule, however fast the device turns out to be.
``--compare-blackout`` trains a second copy of the model (same initial
weights) in lockstep on the very same batches and augmentations, without the
blackout: the two curves then differ by the blackout alone, at equal images
seen.

Validation runs on the EMA weights at fixed points of the schedule; the best
by validation log loss is kept. At the end the best weights are measured on
the validation split at full precision and after int8 rounding, and written
to ``<out>/transfer/`` as int8 (per output channel, the format of
``ensemble.weights``) when the AUC moves by at most ``export.AUC_TOLERANCE``,
else as fp16, in files small enough to come back from a lent machine.
``unpack`` turns such a folder back into a run folder that
``train_detector --export-only`` exports (calibration, threshold, manifest).

    python -m ensemble.training.gpu train --member effnet_autoatt_b4 \\
        --data DATA --out RUN --seconds 400
    python -m ensemble.training.gpu unpack --transfer RUN/transfer/main --out RUN2 --data DATA
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from ensemble.errors import TrainingError
from ensemble.evaluation import log_loss, roc_auc
from ensemble.registry import REGISTRY, MemberSpec
from ensemble.training import augment as aug
from ensemble.training.batches import real_fake_pairs
from ensemble.training.data import (
    Sample,
    data_digest,
    load_samples,
    read_rgb,
    resize_to,
    select,
)
from ensemble.training.optim import (
    Ema,
    apply_drop_path,
    param_groups,
    set_head_dropout,
    smooth_targets,
)
from ensemble.training.runfiles import code_version, write_text_atomic
from ensemble.training.ssim_blackout import DIFF_THRESHOLD, MIN_REGION_FRACTION, OPEN_KERNEL

logger = logging.getLogger(__name__)

TRANSFER = "transfer"
TRANSFER_MANIFEST = "transfer.json"
# Files that come back from a lent machine are limited to 16 MiB each.
MAX_TRANSFER_FILE = 15 * 1024 * 1024
EVAL_BATCH = 256
SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03
# A pair whose SSIM difference marks more than this share of the crop is not
# the same frame (the map then shows the scene moving, not the manipulation):
# no blackout for it. The CPU blackout aligns such pairs by their keypoints.
MAX_REGION_FRACTION = 0.5
# Parameters that never take part in the forward pass stay at their random
# initialisation; they are not transferred, and ``unpack`` rebuilds them from
# a fresh model (timm's ImageNet classifier inside the B7 encoder, kept only
# so that selimsef's checkpoints load with strict=True).
UNTRAINED_PREFIXES: dict[str, tuple[str, ...]] = {"effnet_b7": ("encoder.classifier.",)}


@dataclass(frozen=True)
class GpuRecipe:
    """Hyper-parameters of a device run (per member: :data:`GPU_RECIPES`)."""

    input_size: int
    batch_size: int
    lr: float
    weight_decay: float = 0.05
    warmup: float = 0.04  # share of the schedule
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.05
    drop_path: float = 0.0
    ema_decay: float = 0.999
    blackout_prob: float = 0.0
    head_dropout: float | None = None
    grad_clip: float = 1.0
    evals: int = 8


# At 224 px, the crops' own size. AdamW from scratch; batch sizes fill an
# H100/H200-class device without crowding three runs side by side.
GPU_RECIPES: dict[str, GpuRecipe] = {
    "resnet50": GpuRecipe(
        input_size=224, batch_size=256, lr=2e-3, drop_path=0.05, head_dropout=0.2
    ),
    "effnet_autoatt_b4": GpuRecipe(input_size=224, batch_size=128, lr=1e-3, drop_path=0.2),
    "effnet_b7": GpuRecipe(
        input_size=224, batch_size=64, lr=6e-4, drop_path=0.2, blackout_prob=0.5
    ),
}
DEFAULT_GPU_RECIPE = GpuRecipe(input_size=32, batch_size=8, lr=1e-3, weight_decay=0.0, evals=2)


def gpu_recipe(spec: MemberSpec) -> GpuRecipe:
    return GPU_RECIPES.get(spec.name, replace(DEFAULT_GPU_RECIPE, input_size=spec.input_size))


# --- Data -------------------------------------------------------------------


@dataclass
class DeviceCrops:
    """One split, decoded: ``images`` uint8 ``[N, 3, S, S]`` on the device."""

    images: Tensor
    labels: Tensor  # float [N], 1 = fake
    pairs: Tensor  # long [P, 2]: (real index, fake index)
    samples: list[Sample]


def _decode(args: tuple[str, int]) -> npt.NDArray[np.uint8]:
    path, size = args
    image, _ = resize_to(read_rgb(Path(path)), None, size)
    return image


def decode_split(
    data: Path, split: str, size: int, device: torch.device, workers: int = 4
) -> DeviceCrops:
    """Every crop of ``split`` decoded (in ``workers`` processes) onto ``device``."""
    samples = select(load_samples(data), split)
    if not samples:
        raise TrainingError(f"{data} has no {split} samples")
    jobs = [(str(s.path), size) for s in samples]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            images = pool.map(_decode, jobs, chunksize=64)
    else:
        images = [_decode(job) for job in jobs]
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([float(s.label) for s in samples])
    pairs = torch.tensor(real_fake_pairs(samples), dtype=torch.long).reshape(-1, 2)
    return DeviceCrops(stacked.to(device), labels.to(device), pairs.to(device), samples)


# --- Augmentation on the device ------------------------------------------------


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def _chance(n: int, p: float, gen: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=gen, device=device) < p


@dataclass
class AugDraw:
    """One draw of every augmentation for ``n`` pairs (both crops of a pair share it)."""

    n: int
    affine: Tensor  # [n, 2, 3] theta for affine_grid
    jpeg: Tensor  # [n] bool
    jpeg_quality: int
    downscale: Tensor  # [n] bool
    downscale_factor: float
    flip: Tensor
    colour: Tensor  # [n, 3]: brightness, contrast, saturation factors (1 = unchanged)
    noise: Tensor  # [n] std (0 = none)
    blur: Tensor  # [n] bool
    blur_sigma: float
    cutout: Tensor  # [n, holes, 4]: x0, y0, x1, y1 as shares of the side; empty holes 0
    blackout_angle: Tensor  # [n] radians
    blackout: Tensor  # [n] bool


def draw_augmentation(
    n: int, gen: torch.Generator, device: torch.device, blackout_prob: float = 0.0
) -> AugDraw:
    def u(low: float, high: float, size: int = n) -> Tensor:
        return _uniform(size, low, high, gen, device)

    warp = _chance(n, aug.P_AFFINE, gen, device)
    scale = torch.where(warp, u(*aug.AFFINE_SCALE), torch.ones(n, device=device))
    angle = torch.where(warp, u(*aug.AFFINE_ROTATE), torch.zeros(n, device=device))
    angle = angle * math.pi / 180
    shift = torch.where(warp[:, None], u(*aug.AFFINE_SHIFT, 2 * n).reshape(n, 2), 0.0)
    # affine_grid maps output coordinates to input ones ([-1, 1] spans the side):
    # zoom in by ``scale`` is sampling a region 1/scale as large.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos, -sin, -2 * shift[:, 0]], 1),
            torch.stack([sin, cos, -2 * shift[:, 1]], 1),
        ],
        1,
    )
    colour_on = _chance(n, aug.P_COLOUR, gen, device)[:, None]
    colour = torch.where(colour_on, u(0.8, 1.2, 3 * n).reshape(n, 3), 1.0)
    noise_on = _chance(n, aug.P_NOISE, gen, device)
    noise = torch.where(noise_on, u(*aug.NOISE_STD), 0.0)
    holes_max = aug.CUTOUT_HOLES[1]
    cut_on = _chance(n, aug.P_CUTOUT, gen, device)
    n_holes = torch.randint(aug.CUTOUT_HOLES[0], holes_max + 1, (n,), generator=gen, device=device)
    hole_used = (torch.arange(holes_max, device=device)[None, :] < n_holes[:, None]) & cut_on[
        :, None
    ]
    side = u(*aug.CUTOUT_SIZE, 2 * n * holes_max).reshape(n, holes_max, 2)
    corner = torch.rand(n, holes_max, 2, generator=gen, device=device) * (1 - side)
    cutout = torch.cat([corner, corner + side], 2) * hole_used[..., None]
    return AugDraw(
        n=n,
        affine=theta,
        jpeg=_chance(n, aug.P_JPEG, gen, device),
        jpeg_quality=int(torch.randint(*aug.JPEG_QUALITY, (1,), generator=gen, device=device)),
        downscale=_chance(n, aug.P_DOWNSCALE, gen, device),
        downscale_factor=float(u(*aug.DOWNSCALE, 1)),
        flip=_chance(n, aug.P_FLIP, gen, device),
        colour=colour,
        noise=noise,
        blur=_chance(n, aug.P_BLUR, gen, device),
        blur_sigma=float(u(*aug.BLUR_SIGMA, 1)),
        cutout=cutout,
        blackout_angle=u(0.0, 2 * math.pi),
        blackout=_chance(n, blackout_prob, gen, device),
    )


class JpegCodec:
    """JPEG round trip with torchvision (nvJPEG for CUDA tensors, libjpeg on
    the CPU); if that is missing or fails, JPEG augmentation is switched off
    for the rest of the run, and ``note`` says why."""

    def __init__(self) -> None:
        self.enabled = True
        self.note = ""

    def __call__(self, images: Tensor, quality: int) -> Tensor:
        if not self.enabled or images.shape[0] == 0:
            return images
        try:
            import warnings

            from torchvision.io import decode_jpeg, encode_jpeg

            # torchvision 0.29 deprecates its image codecs (for TorchCodec); they still work.
            warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)

            encoded = encode_jpeg(list(images.contiguous().unbind(0)), quality=quality)
            # decode_jpeg reads the bytes from host memory.
            decoded = decode_jpeg([e.cpu() for e in encoded], device=images.device)
            return torch.stack(list(decoded))
        except Exception as exc:  # any failure: train on without it
            self.enabled = False
            self.note = f"JPEG augmentation off: {type(exc).__name__}: {exc}"
            logger.warning(self.note)
            return images


def _gaussian_kernel(sigma: float, device: torch.device) -> Tensor:
    radius = max(1, math.ceil(2.5 * sigma))
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _blur(x: Tensor, sigma: float) -> Tensor:
    k = _gaussian_kernel(sigma, x.device)
    c = x.shape[1]
    r = k.numel() // 2
    x = F.conv2d(
        F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c
    )
    return F.conv2d(
        F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c
    )


def apply_augmentation(
    images: Tensor, draw: AugDraw, which: Tensor, gen: torch.Generator, jpeg: JpegCodec
) -> Tensor:
    """``images`` uint8 ``[B, 3, S, S]``; ``which[b]`` is the pair whose draw
    applies to image ``b``. Returns float ``[B, 3, S, S]`` in ``[0, 1]``."""
    device = images.device
    size = images.shape[-1]
    x = images.float() / 255
    grid = F.affine_grid(draw.affine[which], list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    sel = draw.jpeg[which]
    if sel.any():
        as_bytes = (x[sel] * 255).round().clamp(0, 255).to(torch.uint8)
        x[sel] = jpeg(as_bytes, draw.jpeg_quality).float() / 255
    sel = draw.downscale[which]
    if sel.any():
        small = max(2, round(size * draw.downscale_factor))
        down = F.interpolate(x[sel], size=(small, small), mode="area")
        x[sel] = F.interpolate(down, size=(size, size), mode="bilinear", align_corners=False)
    flip = draw.flip[which]
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    colour = draw.colour[which]
    x = x * colour[:, 0, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * colour[:, 1, None, None, None] + mean
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    x = (x - grey) * colour[:, 2, None, None, None] + grey
    # One noise pattern per pair, as one seed per pair gives the CPU pipeline.
    # (The first H200 run, at 29c518d, drew it per image.)
    noise = torch.randn((draw.n, *x.shape[1:]), generator=gen, device=device)
    x = x + noise[which] * draw.noise[which][:, None, None, None]
    sel = draw.blur[which]
    if sel.any():
        x[sel] = _blur(x[sel], draw.blur_sigma)
    coords = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    holes = draw.cutout[which]  # [B, H, 4]
    inside_x = (coords[None, None, :] >= holes[..., 0:1]) & (
        coords[None, None, :] < holes[..., 2:3]
    )
    inside_y = (coords[None, None, :] >= holes[..., 1:2]) & (
        coords[None, None, :] < holes[..., 3:4]
    )
    cut = (inside_y[..., :, None] & inside_x[..., None, :]).any(1)  # [B, S, S]
    x = x.masked_fill(cut[:, None], 0.0)
    return x.clamp(0, 1)


def ssim_difference_map(a: Tensor, b: Tensor) -> Tensor:
    """``(1 - SSIM) / 2`` per pixel averaged over channels, for float images
    ``[B, C, H, W]`` in ``[0, 1]``: scikit-image's defaults (7x7 uniform window,
    sample covariance, K1 0.01, K2 0.03, reflected borders), as
    ``ensemble.align.ssim_difference`` computes on the CPU."""
    pad = SSIM_WINDOW // 2

    def mean(t: Tensor) -> Tensor:
        return F.avg_pool2d(F.pad(t, (pad,) * 4, mode="reflect"), SSIM_WINDOW, stride=1)

    n = SSIM_WINDOW**2
    cov_norm = n / (n - 1)
    ua, ub = mean(a), mean(b)
    vaa = cov_norm * (mean(a * a) - ua * ua)
    vbb = cov_norm * (mean(b * b) - ub * ub)
    vab = cov_norm * (mean(a * b) - ua * ub)
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    ssim = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua**2 + ub**2 + c1) * (vaa + vbb + c2))
    # scikit-image crops the border of half a window before averaging; per pixel, keep it all.
    return ((1 - ssim) / 2).mean(1, keepdim=True)


def blackout_region(fakes: Tensor, reals: Tensor) -> Tensor:
    """1 where a fake differs structurally from its real (float ``[B, 1, H, W]``):
    the SSIM difference at or above ``DIFF_THRESHOLD``, opened with a
    ``OPEN_KERNEL`` square to drop isolated pixels."""
    region = (ssim_difference_map(fakes, reals) >= DIFF_THRESHOLD).float()
    r = OPEN_KERNEL // 2
    eroded = -F.max_pool2d(-region, OPEN_KERNEL, stride=1, padding=r)
    return F.max_pool2d(eroded, OPEN_KERNEL, stride=1, padding=r)


def apply_blackout(fakes: Tensor, reals: Tensor, draw: AugDraw) -> tuple[Tensor, Tensor]:
    """Fakes (uint8 ``[n, 3, S, S]``) with the side of a random line through
    the centre of their manipulated region blacked out, where ``draw.blackout``
    says and the region covers between ``MIN_REGION_FRACTION`` and
    ``MAX_REGION_FRACTION`` of the crop.
    Returns the images and which were changed."""
    if not draw.blackout.any():
        return fakes, draw.blackout
    region = blackout_region(fakes.float() / 255, reals.float() / 255)[:, 0]
    n, size = fakes.shape[0], fakes.shape[-1]
    area = region.sum(dim=(1, 2))
    pixels = size * size
    used = (
        draw.blackout
        & (area >= MIN_REGION_FRACTION * pixels)
        & (area <= MAX_REGION_FRACTION * pixels)
    )
    grid = torch.arange(size, device=fakes.device, dtype=torch.float32)
    yy, xx = grid[:, None].expand(size, size), grid[None, :].expand(size, size)
    weight = area.clamp(min=1)
    cx = (region * xx).sum(dim=(1, 2)) / weight
    cy = (region * yy).sum(dim=(1, 2)) / weight
    cos, sin = torch.cos(draw.blackout_angle), torch.sin(draw.blackout_angle)
    side = (xx[None] - cx[:, None, None]) * cos[:, None, None] + (
        yy[None] - cy[:, None, None]
    ) * sin[:, None, None] >= 0
    mask = (region > 0) & side & used[:, None, None]
    return fakes.masked_fill(mask[:, None].expand(n, 3, size, size), 0), used


# --- Models and their state ---------------------------------------------------


class FastEma(Ema):
    """The loop's EMA (same decay warm-up) with fused (foreach) updates: one
    kernel for all floating-point tensors instead of one per tensor."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__(model, decay)
        src, dst = model.state_dict(), self.model.state_dict()
        self._float = [(dst[k], src[k]) for k in src if src[k].is_floating_point()]
        self._other = [(dst[k], src[k]) for k in src if not src[k].is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module | None = None) -> None:
        """Average in the model given at construction (``model`` is ignored)."""
        d = self.current_decay()
        self.updates += 1
        dst = [t for t, _ in self._float]
        torch._foreach_mul_(dst, d)
        torch._foreach_add_(dst, [s for _, s in self._float], alpha=1 - d)
        for t, s in self._other:
            t.copy_(s)


@dataclass
class Trainee:
    """One model under training, with its optimiser, EMA and record."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: FastEma
    blackout: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Tensor] | None = None
    best_point: dict[str, Any] | None = None
    blacked_out: int = 0


def _normalise(x: Tensor, spec: MemberSpec) -> Tensor:
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict_logits(
    model: nn.Module, crops: DeviceCrops, spec: MemberSpec, *, bf16: bool
) -> npt.NDArray[np.float64]:
    model.eval()
    out = []
    device = crops.images.device
    for start in range(0, crops.images.shape[0], EVAL_BATCH):
        x = _normalise(crops.images[start : start + EVAL_BATCH].float() / 255, spec)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out.append(model(x).float().flatten().cpu())
    return torch.cat(out).double().numpy()


def val_metrics(logits: npt.NDArray[np.float64], labels: npt.NDArray[np.float64]) -> dict[str, Any]:
    probs = 1 / (1 + np.exp(-logits))
    return {"auc": roc_auc(probs, labels), "log_loss": log_loss(probs, labels)}


def transfer_state(
    state: Mapping[str, Tensor], quantization: str, skip: Sequence[str] = ()
) -> dict[str, Tensor]:
    """The tensors ``state`` is stored as (``ensemble.weights.stored_tensors``),
    leaving out keys that start with any of ``skip``."""
    from ensemble.weights import stored_tensors

    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if not any(key.startswith(p) for p in skip):
            out.update(stored_tensors(key, value, quantization))
    return out


def write_transfer(
    folder: Path,
    member: str,
    tensors: Mapping[str, Tensor],
    info: Mapping[str, Any],
    max_file_bytes: int = MAX_TRANSFER_FILE,
) -> list[Path]:
    """``tensors`` as safetensors files of at most ``max_file_bytes`` plus
    ``transfer.json``; returns the files written."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    groups: list[dict[str, Tensor]] = [{}]
    size = 0
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        nbytes = t.numel() * t.element_size() + len(key) + 128
        if groups[-1] and size + nbytes > max_file_bytes - 64 * 1024:
            groups.append({})
            size = 0
        groups[-1][key] = t
        size += nbytes
    paths = []
    for i, group in enumerate(groups):
        path = folder / f"{member}-{i + 1:02d}-of-{len(groups):02d}.safetensors"
        save_file(group, str(path))
        paths.append(path)
    manifest = folder / f"{member}-{TRANSFER_MANIFEST}"
    manifest.write_text(
        json.dumps({**info, "files": [p.name for p in paths]}, indent=2) + "\n", encoding="utf-8"
    )
    return [manifest, *paths]


# --- Training -------------------------------------------------------------------


def schedule_factor(progress: float, warmup: float, min_ratio: float) -> float:
    """LR multiplier at ``progress`` in [0, 1]: linear warm-up, then cosine to ``min_ratio``."""
    if progress < warmup:
        return max(progress / warmup, 0.01)
    t = min((progress - warmup) / max(1 - warmup, 1e-9), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def _build(
    spec: MemberSpec,
    recipe: GpuRecipe,
    device: torch.device,
    seed: int,
    init_from: Path | None = None,
) -> nn.Module:
    torch.manual_seed(seed)
    model = spec.build()
    if init_from is not None:
        from ensemble.training.loop import initial_model

        model = initial_model(spec, init_from)
    if recipe.drop_path:
        apply_drop_path(model, recipe.drop_path)
    if recipe.head_dropout is not None:
        set_head_dropout(model, recipe.head_dropout)
    return model.to(device).to(memory_format=torch.channels_last)


def train_gpu(
    spec: MemberSpec,
    data: Path,
    out: Path,
    *,
    seconds: float,
    epochs: float,
    recipe: GpuRecipe | None = None,
    seed: int = 0,
    device: str = "cuda",
    compare_blackout: bool = False,
    workers: int = 4,
    init_from: Path | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Train ``spec`` on ``data`` (see the module docstring); returns run.json's
    content. ``init_from`` is a weights folder whose installed member the run
    starts from (hash-checked, as analysis loads it) instead of random weights."""
    recipe = recipe or gpu_recipe(spec)
    dev = torch.device(device)
    bf16 = dev.type == "cuda"
    if dev.type == "cuda":
        # No cuDNN autotuning: EfficientNets have dozens of distinct convolution
        # shapes, and with three runs sharing an H200 their first step took
        # about 70 s of tuning (a whole smoke run's budget).
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    train = decode_split(data, "train", recipe.input_size, dev, workers)
    val = decode_split(data, "val", recipe.input_size, dev, workers)
    if train.pairs.shape[0] == 0:
        raise TrainingError(f"{data} has no real/fake pairs (an 'original' for each fake)")
    load_seconds = time.monotonic() - t0
    val_labels = val.labels.double().cpu().numpy()
    n_pairs = int(train.pairs.shape[0])
    per_batch = max(recipe.batch_size // 2, 1)
    images_target = max(1, int(epochs * 2 * n_pairs))

    trainees: list[Trainee] = []
    variants = (
        [("blackout", True), ("no_blackout", False)]
        if compare_blackout
        else [("main", recipe.blackout_prob > 0)]
    )
    for name, blackout in variants:
        model = _build(spec, recipe, dev, seed, init_from)
        optimizer = torch.optim.AdamW(
            param_groups(model, recipe.weight_decay),
            lr=recipe.lr,
            betas=(0.9, 0.999),
            fused=dev.type == "cuda",
        )
        trainees.append(Trainee(name, model, optimizer, FastEma(model, recipe.ema_decay), blackout))

    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    jpeg = JpegCodec()
    seen = 0
    step = 0
    epoch = 0
    order = torch.randperm(n_pairs, generator=gen, device=dev)
    cursor = 0
    next_eval = 1
    start = clock()
    progress = 0.0
    losses: dict[str, list[Tensor]] = {t.name: [] for t in trainees}

    def evaluate(point: str) -> None:
        for t in trainees:
            logits = predict_logits(t.ema.model, val, spec, bf16=bf16)
            metrics = val_metrics(logits, val_labels)
            mean_loss = (
                float(torch.stack(losses[t.name]).mean()) if losses[t.name] else float("nan")
            )
            losses[t.name].clear()
            row = {
                "point": point,
                "progress": round(progress, 4),
                "images_seen": seen,
                "epochs": round(seen / (2 * n_pairs), 3),
                "step": step,
                "seconds": round(clock() - start, 1),
                "train_loss": mean_loss,
                "val_auc": metrics["auc"],
                "val_log_loss": metrics["log_loss"],
                "lr": t.optimizer.param_groups[0]["lr"],
            }
            t.history.append(row)
            logger.info("%s %s: %s", spec.name, t.name, row)
            if t.best_point is None or metrics["log_loss"] < t.best_point["val_log_loss"]:
                t.best_point = row
                t.best = {k: v.detach().clone() for k, v in t.ema.model.state_dict().items()}

    while progress < 1.0:
        if cursor + per_batch > n_pairs:
            epoch += 1
            order = torch.randperm(n_pairs, generator=gen, device=dev)
            cursor = 0
        chosen = train.pairs[order[cursor : cursor + per_batch]]
        cursor += per_batch
        n = chosen.shape[0]
        reals, fakes = train.images[chosen[:, 0]], train.images[chosen[:, 1]]
        draw = draw_augmentation(n, gen, dev, recipe.blackout_prob)
        which = torch.cat([torch.arange(n, device=dev), torch.arange(n, device=dev)])
        labels = torch.cat([torch.zeros(n, device=dev), torch.ones(n, device=dev)])
        targets = smooth_targets(labels, recipe.label_smoothing)
        noise_state = gen.get_state()
        factor = schedule_factor(progress, recipe.warmup, recipe.min_lr_ratio)
        for t in trainees:
            batch_fakes = fakes
            if t.blackout:
                batch_fakes, used = apply_blackout(fakes, reals, draw)
                t.blacked_out += int(used.sum())
            # Every trainee gets the very same noise.
            gen.set_state(noise_state)
            x = _normalise(
                apply_augmentation(torch.cat([reals, batch_fakes]), draw, which, gen, jpeg), spec
            )
            for group in t.optimizer.param_groups:
                group["lr"] = recipe.lr * factor
            t.model.train()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                logits = t.model(x).float().flatten()
            loss = F.binary_cross_entropy_with_logits(logits, targets)
            t.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            if recipe.grad_clip:
                nn.utils.clip_grad_norm_(t.model.parameters(), recipe.grad_clip)
            t.optimizer.step()
            t.ema.update()
            losses[t.name].append(loss.detach())
        seen += 2 * n
        step += 1
        progress = max(seen / images_target, (clock() - start) / seconds)
        if progress >= next_eval / recipe.evals and progress < 1.0:
            evaluate(f"eval {next_eval}")
            next_eval = int(progress * recipe.evals) + 1
    if dev.type == "cuda":
        torch.cuda.synchronize()
    trained_seconds = clock() - start
    evaluate("end")

    runs: dict[str, Any] = {}
    for t in trainees:
        assert t.best is not None and t.best_point is not None
        runs[t.name] = _finish(t, spec, recipe, train.samples, val, val_labels, out, dev)
    head = trainees[0]
    from ensemble.training.loop import describe_init

    info: dict[str, Any] = {
        "member": spec.name,
        "command": " ".join(sys.argv) if sys.argv and "gpu" in sys.argv[0] else None,
        # A lent machine gets the working tree without .git: the caller names the commit.
        "code_version": os.environ.get("TRUSTTRACE_CODE_VERSION") or code_version(),
        "data": str(data),
        # The crops this machine trained and validated on (a partial upload
        # differs from the full dataset): export checks its --data against it.
        "data_digest": data_digest([*train.samples, *val.samples]),
        "n_train": {"real": int((train.labels == 0).sum()), "fake": int((train.labels == 1).sum())},
        "n_pairs": n_pairs,
        "n_val": {"real": int((val.labels == 0).sum()), "fake": int((val.labels == 1).sum())},
        "recipe": {**asdict(recipe), "paired": True},
        "config": {
            "seconds": seconds,
            "epochs": epochs,
            "seed": seed,
            "val_limit": None,
            "init_from": str(init_from) if init_from else None,
        },
        "init": describe_init(spec, init_from) if init_from else None,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev),
        "torch": torch.__version__,
        "precision": "bf16" if bf16 else "fp32",
        "paired": True,
        "jpeg_augmentation": jpeg.enabled,
        "jpeg_note": jpeg.note,
        "load_seconds": round(load_seconds, 1),
        "images_seen": seen,
        "steps": step,
        "trained_seconds": round(trained_seconds, 1),
        "images_per_second": round(seen * len(trainees) / trained_seconds, 1),
        "models_in_lockstep": len(trainees),
        "runs": runs,
        "best_epoch": head.best_point["epochs"] if head.best_point else None,
    }
    write_text_atomic(out / "run.json", json.dumps(info, indent=2, default=str) + "\n")
    return info


def _finish(
    t: Trainee,
    spec: MemberSpec,
    recipe: GpuRecipe,
    train_samples: Sequence[Sample],
    val: DeviceCrops,
    val_labels: npt.NDArray[np.float64],
    out: Path,
    dev: torch.device,
) -> dict[str, Any]:
    """Measure the best weights at full precision and as int8, write the transfer."""
    from ensemble.training.export import AUC_TOLERANCE, roundtrip

    assert t.best is not None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = t.ema.model
    model.load_state_dict(t.best)
    full = val_metrics(predict_logits(model, val, spec, bf16=False), val_labels)
    cpu_state = {k: v.detach().cpu() for k, v in t.best.items()}
    model.load_state_dict({k: v.to(dev) for k, v in roundtrip(cpu_state, "int8").items()})
    int8 = val_metrics(predict_logits(model, val, spec, bf16=False), val_labels)
    ok = (
        full["auc"] is not None
        and int8["auc"] is not None
        and abs(full["auc"] - int8["auc"]) <= AUC_TOLERANCE
    )
    quant = "int8" if ok else "fp16"
    torch.save(
        {"state_dict": cpu_state, "input_size": recipe.input_size}, out / f"best-{t.name}.pt"
    )
    skip = UNTRAINED_PREFIXES.get(spec.name, ())
    record = {
        "variant": t.name,
        "blackout": t.blackout,
        "blacked_out_fakes": t.blacked_out,
        "history": t.history,
        "best": t.best_point,
        "val_full_precision": full,
        "val_int8": int8,
        "transferred_as": quant,
    }
    info = {
        "member": spec.name,
        "input_size": recipe.input_size,
        # The crops trained and validated on, in the transfer itself (run.json
        # does not come back with it): unpack --data is checked against it.
        "data_digest": data_digest([*train_samples, *val.samples]),
        "quantization": quant,
        "untransferred_prefixes": list(skip),
        **record,
    }
    write_transfer(out / TRANSFER / t.name, spec.name, transfer_state(cpu_state, quant, skip), info)
    return record


# --- Back on the CPU: transfer -> run folder -------------------------------------


def unpack(
    transfer: Path,
    out: Path,
    run_json: Path | None = None,
    spec: MemberSpec | None = None,
    data: Path | None = None,
) -> Path:
    """A run folder (``best.pt``, ``run.json``) from a transfer folder, for
    ``train_detector --export-only``. Keys left out of the transfer are taken
    from a freshly built model (they never run)."""
    from safetensors.torch import load_file

    from ensemble.weights import dequantize_int8

    manifests = sorted(transfer.glob(f"*-{TRANSFER_MANIFEST}"))
    if len(manifests) != 1:
        raise TrainingError(
            f"{transfer} should hold one *-{TRANSFER_MANIFEST}, found {len(manifests)}"
        )
    info = json.loads(manifests[0].read_text(encoding="utf-8"))
    spec = spec or REGISTRY.get(info["member"])
    stored: dict[str, Tensor] = {}
    for name in info["files"]:
        stored.update(load_file(str(transfer / name)))
    if info["quantization"] == "int8":
        stored = dequantize_int8(stored)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in stored.items()}
    torch.manual_seed(0)
    fresh = spec.build().state_dict()
    missing = [k for k in fresh if k not in state]
    outside = [
        k for k in missing if not any(k.startswith(p) for p in info["untransferred_prefixes"])
    ]
    if outside:
        raise TrainingError(f"the transfer lacks {len(outside)} keys, e.g. {outside[:3]}")
    for key in missing:
        state[key] = fresh[key]
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "input_size": info["input_size"]}, out / "best.pt")
    run_info: dict[str, Any] = {}
    if run_json is not None:
        if not run_json.is_file():
            raise TrainingError(f"--run-json {run_json} does not exist")
        run_info = json.loads(run_json.read_text(encoding="utf-8"))
    trained_on = info.get("data_digest") or run_info.get("data_digest")
    if data is not None:
        samples = load_samples(data)
        here = data_digest(select(samples, "train") + select(samples, "val"))
        if trained_on and trained_on != here:
            raise TrainingError(
                f"{data} is not the data the transfer was trained on (data digest "
                f"{here[:12]}, the run's {str(trained_on)[:12]}): unpack with that data"
            )
        # Transfers from before the digest was recorded take the local data's.
        trained_on = here
    run_info["data_digest"] = trained_on
    run_info["transfer"] = {
        "quantization": info["quantization"],
        "variant": info.get("variant"),
        "val_full_precision": info.get("val_full_precision"),
        "val_int8": info.get("val_int8"),
        "rebuilt_keys": len(missing),
    }
    (out / "run.json").write_text(json.dumps(run_info, indent=2) + "\n", encoding="utf-8")
    return out


def collect(source: Path, dest: Path, sent: Path, max_bytes: int, max_files: int) -> list[str]:
    """Copy files under ``source`` not listed in ``sent`` into ``dest`` (flat,
    ``a__b__file`` names), smallest run first, within the limits; ``sent`` grows."""
    done = set(sent.read_text().split()) if sent.is_file() else set()
    files = [p for p in sorted(source.rglob("*")) if p.is_file() and str(p) not in done]
    # Whole transfers together: a member's files in order, summaries first.
    files.sort(key=lambda p: (p.suffix == ".safetensors", str(p.parent), p.name))
    copied: list[str] = []
    total = 0
    dest.mkdir(parents=True, exist_ok=True)
    for p in files:
        size = p.stat().st_size
        if len(copied) >= max_files or total + size > max_bytes:
            continue
        name = "__".join(p.relative_to(source).parts)
        shutil.copyfile(p, dest / name)
        copied.append(str(p))
        total += size
    with sent.open("a") as fh:
        fh.writelines(c + "\n" for c in copied)
    return copied


# Default image budgets (epochs of pairs) per member in a session; the wall
# clock usually ends a run first.
SESSION_EPOCHS = {"resnet50": 40.0, "effnet_autoatt_b4": 40.0, "effnet_b7": 40.0}


def _extract(zips: Path, data: Path, work: Path) -> None:
    import zipfile

    data.mkdir(parents=True, exist_ok=True)
    for archive in sorted(zips.glob("*.zip")):
        marker = work / f"extracted-{archive.name}"
        if not marker.exists():
            with zipfile.ZipFile(archive) as z:
                z.extractall(data)
            marker.touch()


def _present_rows_csv(data: Path) -> Path:
    """A metadata CSV of the rows whose files are present (a partial upload)."""
    import csv

    with (data / "metadata.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = [r for r in reader if (data / r["file"]).is_file()]
    path = data / "present.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def session(
    zips: Path,
    work: Path,
    dest: Path,
    *,
    seconds: float,
    members: Sequence[str],
    partial: bool = False,
    max_mib: float = 62.0,
    max_files: int = 8,
    device: str = "cuda",
    init_from: Path | None = None,
) -> dict[str, Any]:
    """One call on a lent machine: unpack the uploaded dataset zips into
    ``work``, train ``members`` side by side (each in its own process; the B7
    with ``--compare-blackout``), write ``summary.json`` and ``logs.txt`` into
    ``dest`` and as many transfer files as fit the way back; the rest are
    left for ``collect``. ``partial`` trains on the rows present so far."""
    import subprocess

    data = work / "data"
    _extract(zips, data, work)
    source = _present_rows_csv(data) if partial else data
    procs = {}
    for member in members:
        out = work / "runs" / member
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        cmd = [
            sys.executable,
            "-m",
            "ensemble.training.gpu",
            "train",
            "--member",
            member,
            "--data",
            str(source),
            "--out",
            str(out),
            "--seconds",
            str(seconds),
            "--epochs",
            str(SESSION_EPOCHS.get(member, 30.0)),
            "--device",
            device,
        ]
        if member == "effnet_b7":
            cmd.append("--compare-blackout")
        if init_from is not None:
            cmd += ["--init-from", str(init_from)]
        log = (work / "runs" / f"{member}.log").open("w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603 (our module)
        procs[member] = (proc, log)
    summary: dict[str, Any] = {"seconds": seconds, "members": {}}
    for member, (proc, log) in procs.items():
        code = proc.wait()
        log.close()
        run_json = work / "runs" / member / "run.json"
        summary["members"][member] = {
            "returncode": code,
            "run": json.loads(run_json.read_text()) if run_json.is_file() else None,
        }
    dest.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, indent=1, default=str)
    (dest / "summary.json").write_text(text + "\n", encoding="utf-8")
    with (dest / "logs.txt").open("w") as fh:
        for member in procs:
            lines = (work / "runs" / f"{member}.log").read_text(errors="replace").splitlines()
            fh.write(f"==> {member} <==\n" + "\n".join(lines[-80:]) + "\n")
    used = sum(p.stat().st_size for p in dest.iterdir())
    staged = work / "outgoing"
    if staged.exists():
        shutil.rmtree(staged)
    for member in members:
        for variant in ("main", "blackout"):
            folder = work / "runs" / member / TRANSFER / variant
            if folder.is_dir():
                shutil.copytree(folder, staged / member)
    sent = work / "sent.txt"
    sent.unlink(missing_ok=True)
    if staged.is_dir():
        collect(staged, dest, sent, int(max_mib * 2**20) - used, max_files - 2)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m ensemble.training.gpu", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    t = sub.add_parser("train", help="train one member on a CUDA device")
    t.add_argument("--member", required=True, choices=REGISTRY.names())
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--seconds", type=float, required=True, help="wall-clock budget of training")
    t.add_argument("--epochs", type=float, default=30.0, help="image budget, in epochs of pairs")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cuda")
    t.add_argument("--workers", type=int, default=4)
    t.add_argument("--compare-blackout", action="store_true")
    t.add_argument("--init-from", type=Path, help="start from this weights folder's member")
    u = sub.add_parser("unpack", help="a transfer folder back into a run folder")
    u.add_argument("--transfer", type=Path, required=True)
    u.add_argument("--run-json", type=Path)
    u.add_argument("--data", type=Path, help="the dataset, to record its digest")
    u.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("session", help="one call on a lent machine (see session())")
    s.add_argument("--zips", type=Path, required=True)
    s.add_argument("--work", type=Path, required=True)
    s.add_argument("--dest", type=Path, required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--members", default="resnet50,effnet_autoatt_b4,effnet_b7")
    s.add_argument("--partial", action="store_true")
    s.add_argument("--device", default="cuda")
    s.add_argument("--max-mib", type=float, default=62.0, help="room for transfers in DEST")
    s.add_argument("--init-from", type=Path, help="weights folder the members start from")
    c = sub.add_parser("collect", help="copy what has not come back yet into OUT")
    c.add_argument("--source", type=Path, required=True)
    c.add_argument("--dest", type=Path, required=True)
    c.add_argument("--sent", type=Path, required=True)
    c.add_argument("--max-mib", type=float, default=62)
    c.add_argument("--max-files", type=int, default=8)
    args = parser.parse_args(argv)
    if args.verb == "train":
        train_gpu(
            REGISTRY.get(args.member),
            args.data,
            args.out,
            seconds=args.seconds,
            epochs=args.epochs,
            seed=args.seed,
            device=args.device,
            compare_blackout=args.compare_blackout,
            workers=args.workers,
            init_from=args.init_from,
        )
    elif args.verb == "session":
        session(
            args.zips,
            args.work,
            args.dest,
            seconds=args.seconds,
            members=args.members.split(","),
            partial=args.partial,
            device=args.device,
            max_mib=args.max_mib,
            init_from=args.init_from,
        )
    elif args.verb == "unpack":
        print(unpack(args.transfer, args.out, args.run_json, data=args.data))  # noqa: T201 (a CLI's answer)
    else:
        for path in collect(
            args.source, args.dest, args.sent, int(args.max_mib * 2**20), args.max_files
        ):
            print(path)  # noqa: T201 (a CLI's answer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
