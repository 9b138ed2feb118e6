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
from explain.replay import OnnxExplainRunners


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
    member: LoadedMember,
    crops: Sequence[RGBImage],
    batch_size: int,
    runners: OnnxExplainRunners | None = None,
) -> list[FloatMap]:
    """The model's own attention (sigmoid, ``[0, 1]``, not rescaled) for each
    crop, upsampled bilinearly to the crop size. With ``runners`` and a member
    that scores with ONNX Runtime, an exported ``attention_map`` graph computes it."""
    model = member.model
    if not isinstance(model, HasAttention):
        raise TypeError(f"member {member.name} has no attention map")
    onnx = (
        runners is not None
        and member.backend == "onnxruntime"
        and isinstance(model, HasAttentionMap)
    )
    size = member.input_size
    maps: list[FloatMap] = []
    for start in range(0, len(crops), batch_size):
        chunk = crops[start : start + batch_size]
        if onnx and runners is not None:
            raw = runners.attention(member, chunk)
        elif isinstance(model, HasAttentionMap):
            raw = model.attention_map(member.to_tensor(chunk)).float().cpu().numpy()
        else:
            raw = model.forward_with_attention(member.to_tensor(chunk))[1].float().cpu().numpy()
        for a in raw[:, 0]:
            up = cv2.resize(a.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
            maps.append(np.clip(up, 0.0, 1.0).astype(np.float32))
    return maps
