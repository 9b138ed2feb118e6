"""Attention maps of members that learn one (EfficientNetAutoAttB4)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import cv2
import numpy as np
import torch
from torch import Tensor

from ensemble.media import RGBImage
from ensemble.members import LoadedMember
from explain.geometry import FloatMap


@runtime_checkable
class HasAttention(Protocol):
    def forward_with_attention(self, x: Tensor) -> tuple[Tensor, Tensor]: ...


@runtime_checkable
class HasAttentionMap(Protocol):
    """A model that can compute its attention without the rest of the network."""

    def attention_map(self, x: Tensor) -> Tensor: ...


def has_attention(member: LoadedMember) -> bool:
    """Does the member declare, and its model provide, an attention map?"""
    return member.spec.has_attention and isinstance(member.model, HasAttention)


@torch.inference_mode()
def attention_maps(
    member: LoadedMember, crops: Sequence[RGBImage], batch_size: int
) -> list[FloatMap]:
    """The model's own attention (sigmoid, ``[0, 1]``, not rescaled) for each
    crop, upsampled bilinearly to the crop size."""
    model = member.model
    if not isinstance(model, HasAttention):
        raise TypeError(f"member {member.name} has no attention map")
    size = member.input_size
    maps: list[FloatMap] = []
    for start in range(0, len(crops), batch_size):
        x = member.to_tensor(crops[start : start + batch_size])
        if isinstance(model, HasAttentionMap):
            attention = model.attention_map(x)  # stops at the attention layer
        else:
            _, attention = model.forward_with_attention(x)
        for a in attention.float().cpu().numpy()[:, 0]:
            up = cv2.resize(a.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
            maps.append(np.clip(up, 0.0, 1.0).astype(np.float32))
    return maps
