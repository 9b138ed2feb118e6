"""Attention maps of members that learn one (EfficientNetAutoAttB4)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import cv2
import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from ensemble.media import RGBImage
from ensemble.members import TAP_ATTENTION, LoadedMember
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
    member: LoadedMember,
    crops: Sequence[RGBImage],
    batch_size: int,
    *,
    raw: npt.NDArray[np.float32] | None = None,
) -> list[FloatMap]:
    """The model's own attention (sigmoid, ``[0, 1]``, not rescaled) for each
    crop, upsampled bilinearly to the crop size.

    ``raw`` is the ``[N, 1, h, w]`` attention of these crops when the scoring
    pass kept it (the member's attention tap); otherwise it is computed now,
    by the member's ONNX graph when it has the tap, else by the model (only
    as far as the attention layer when it can)."""
    if not isinstance(member.model, HasAttention):
        raise TypeError(f"member {member.name} has no attention map")
    if raw is None and TAP_ATTENTION in member.tap_names:
        raw = member.infer(crops, batch_size, taps=(TAP_ATTENTION,), mirror=False).taps[
            TAP_ATTENTION
        ]
    if raw is None:
        parts = []
        with member.whole_model() as model:
            assert isinstance(model, HasAttention)  # the same class, reloaded
            for start in range(0, len(crops), batch_size):
                x = member.to_tensor(crops[start : start + batch_size])
                out = (
                    model.attention_map(x)
                    if isinstance(model, HasAttentionMap)
                    else model.forward_with_attention(x)[1]
                )
                parts.append(out.float().cpu().numpy())
        raw = np.concatenate(parts) if parts else np.zeros((0, 1, 1, 1), np.float32)
    if len(raw) != len(crops):
        raise ValueError("one attention map per crop is needed")
    size = member.input_size
    return [
        np.clip(
            cv2.resize(a.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR), 0.0, 1.0
        ).astype(np.float32)
        for a in raw[:, 0]
    ]


def attention_spread(
    attention: npt.NDArray[np.floating], top_share: float = 0.1
) -> dict[str, float]:
    """How concentrated one attention map is (the raw ``[h, w]`` map, before upsampling).

    - ``entropy``: the Shannon entropy of the map normalised to sum to one,
      divided by ``log(h * w)``: 1.0 for a uniform map (attends to nothing in
      particular), 0.0 for a single pixel (explains nothing either);
    - ``top_mass``: the share of the map's total in its ``top_share`` highest
      pixels (``top_share`` itself for a uniform map, 1.0 for a few pixels);
    - ``mean`` and ``range``: of the sigmoid values themselves.
    """
    a = np.asarray(attention, dtype=np.float64).ravel()
    if a.size < 2 or not np.isfinite(a).all() or (a < 0).any():
        raise ValueError("an attention map of at least two finite, non-negative values is needed")
    total = a.sum()
    if total <= 0:
        return {"entropy": 0.0, "top_mass": 1.0, "mean": 0.0, "range": 0.0}
    p = a / total
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum() / np.log(a.size))
    k = max(1, round(top_share * a.size))
    top = float(np.sort(p)[-k:].sum())
    return {"entropy": entropy, "top_mass": top, "mean": float(a.mean()), "range": float(np.ptp(a))}
