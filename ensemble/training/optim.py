"""Optimisation parts of the training loop: the EMA of the weights, the
learning-rate schedule, parameter groups, label smoothing, drop path and
dropout settings."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

# The EMA decay warms up as (1 + n) / (EMA_WARMUP + n) after n updates.
EMA_WARMUP = 10


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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
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


def set_head_dropout(model: nn.Module, rate: float) -> int:
    """Sets every ``nn.Dropout`` of the model to ``rate`` (dropout holds no
    weights, so checkpoints are unaffected); returns how many were set."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = rate
            count += 1
    return count
