"""Grad-CAM and attention maps with the expensive layers run by ONNX Runtime.

When a member scores with ONNX Runtime (``member.backend == "onnxruntime"``,
two to four times faster than eager PyTorch on CPU), the explanations use it
too, for the part of the network that dominates the cost:

- Grad-CAM needs the target layer's activations ``A`` and the gradient of the
  fake-logit with respect to ``A``. ONNX Runtime computes the logit and ``A``
  (the member exported with the target layer's output as a second output).
  The gradient only involves the layers after the target layer, so PyTorch
  replays the model with the target layer's output *replaced* by ``A`` (a
  forward hook) while the layers before it see a tiny dummy image whose
  result is discarded (the activations set the batch size from there on).
  ``pytorch_grad_cam`` then runs on that replay as usual, inside its
  ``with`` block. The replayed logits are checked against
  ONNX Runtime's; on any mismatch (a model whose later layers also read
  earlier tensors) the plain PyTorch Grad-CAM is used instead.
- Attention maps come from an exported ``attention_map`` graph.

Exported graphs are cached like the members' own (``ensemble.runtime``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ensemble.media import RGBImage
from ensemble.members import LoadedMember
from ensemble.runtime import OnnxRunner

logger = logging.getLogger(__name__)

# The dummy input the layers before the target layer see in a replay: one
# small image, always the same shape, so oneDNN sets its kernels up once
# (every new input shape costs a slow first call or two).
DUMMY_SIDE = 32
# Replayed logits must match ONNX Runtime's this closely (absolute, plus relative).
LOGIT_ATOL = 1e-3
LOGIT_RTOL = 1e-3


class _WithActivation(nn.Module):
    """The model's logit and its target layer's output (for export)."""

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._layer = [layer]  # a list: not registered twice as a submodule

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        captured: list[Tensor] = []
        handle = self._layer[0].register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            logit = self.model(x)
        finally:
            handle.remove()
        return logit, captured[0]


class _AttentionOnly(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model.attention_map(x)  # type: ignore[operator]
        return out


class Replay(nn.Module):
    """``model`` with ``layer``'s output replaced by :attr:`activations`; the
    layers before it run on one tiny dummy image. Its input only sets the
    size the Grad-CAM maps are resized to."""

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._layer = [layer]
        self.activations: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        act = self.activations
        if act is None or act.shape[0] != x.shape[0]:
            raise RuntimeError("set the activations of this batch before replaying it")

        def replace(module: nn.Module, inputs: Any, output: Any) -> Tensor:
            return act

        handle = self._layer[0].register_forward_hook(replace, prepend=True)
        try:
            dummy = x.new_zeros((1, 3, DUMMY_SIDE, DUMMY_SIDE))
            out: Tensor = self.model(dummy)
        finally:
            handle.remove()
        return out


def _export(
    member: LoadedMember, module: nn.Module, tag: str, outputs: Sequence[str]
) -> OnnxRunner:
    example = torch.zeros(2, 3, member.input_size, member.input_size)
    # Outside inference mode: converting the memory format there would turn the
    # parameters into inference tensors, which Grad-CAM cannot use afterwards.
    with torch.inference_mode(False), torch.no_grad():
        return _export_now(member, module, tag, outputs, example)


def _export_now(
    member: LoadedMember,
    module: nn.Module,
    tag: str,
    outputs: Sequence[str],
    example: Tensor,
) -> OnnxRunner:
    member.model.to(memory_format=torch.contiguous_format)
    try:
        return OnnxRunner.for_module(
            module, example, tag=f"{member.name}_{member.input_size}_{tag}",
            weights_sha256=member.weights_sha256, cache_dir=member.cache_dir,
            output_names=outputs, threads=member.threads,
        )  # fmt: skip
    finally:
        if member.channels_last:
            member.model.to(memory_format=torch.channels_last)


class OnnxExplainRunners:
    """Exported graphs for explanations, made once per member and kept."""

    def __init__(self) -> None:
        self._runners: dict[tuple[str, str | None, str], OnnxRunner] = {}

    def _get(self, member: LoadedMember, kind: str, make: Any) -> OnnxRunner:
        key = (member.name, member.weights_sha256, kind)
        if key not in self._runners:
            self._runners[key] = make()
        return self._runners[key]

    def activations(
        self, member: LoadedMember, layer: nn.Module, crops: Sequence[RGBImage]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logits ``[B]`` and target-layer activations for ``crops``."""
        wrapper = _WithActivation(member.model, layer)
        outputs = ("logit", "activation")
        runner = self._get(member, "gradcam", lambda: _export(member, wrapper, "gradcam", outputs))
        x = member.to_tensor(crops).contiguous().numpy()
        logit, act = runner(x)
        return np.asarray(logit, np.float32).reshape(-1), np.asarray(act, np.float32)

    def attention(self, member: LoadedMember, crops: Sequence[RGBImage]) -> np.ndarray:
        """``[B, 1, h, w]`` attention maps."""
        runner = self._get(
            member,
            "attention",
            lambda: _export(member, _AttentionOnly(member.model), "attention", ("attention",)),
        )
        x = member.to_tensor(crops).contiguous().numpy()
        return np.asarray(runner(x)[0], np.float32)


def logits_match(replayed: Tensor, expected: np.ndarray) -> bool:
    got = replayed.detach().float().reshape(-1).cpu().numpy()
    return got.shape == expected.shape and bool(
        np.allclose(got, expected, atol=LOGIT_ATOL, rtol=LOGIT_RTOL)
    )
