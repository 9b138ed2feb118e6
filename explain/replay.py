"""Grad-CAM from the activations the scoring pass already computed.

When a member scores with OpenVINO or ONNX Runtime (several times faster
than eager PyTorch on CPU), its exported graph also
returns the Grad-CAM layer's output ``A`` (a "tap", see
:class:`ensemble.members.LoadedMember`); an analysis run for explanations
keeps it. Grad-CAM needs ``A`` and the gradient of the fake-logit with respect
to ``A``. That gradient only involves the layers after the target layer, so
PyTorch replays the model with the target layer's output *replaced* by ``A``
(a forward hook) while the layers before it see a tiny dummy image whose
result is discarded (the activations set the batch size from there on).
A member loaded from installed weights keeps only the weights after the
target layer on these backends (``ensemble.members.keep_head_only``): the
layers before it run on placeholders.
Grad-CAM (``explain.gradcam``) then runs on that replay as usual. The
replayed logits are checked against the scoring pass's; on any mismatch (a
model whose later layers also read earlier tensors) the plain PyTorch
Grad-CAM is used instead. No layer before the target runs twice.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor, nn

from ensemble.members import DUMMY_SIDE

# Replayed logits must match the scoring pass's this closely (absolute, plus
# relative) ...
LOGIT_ATOL = 1e-3
LOGIT_RTOL = 1e-3
# ... or this closely when the scoring pass ran in bf16: the replay runs the
# head in fp32 on activations computed in bf16, so the two logits differ by
# the head's rounding (a few hundredths at most on the shipped members),
# while a replay that reads the wrong tensors is off by whole units.
BF16_LOGIT_ATOL = 0.1
BF16_LOGIT_RTOL = 0.05


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


def logits_match(replayed: Tensor, expected: np.ndarray, precision: str = "fp32") -> bool:
    got = replayed.detach().float().reshape(-1).cpu().numpy()
    atol, rtol = (
        (BF16_LOGIT_ATOL, BF16_LOGIT_RTOL) if precision == "bf16" else (LOGIT_ATOL, LOGIT_RTOL)
    )
    return got.shape == expected.shape and bool(np.allclose(got, expected, atol=atol, rtol=rtol))
