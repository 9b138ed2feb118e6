"""Grad-CAM maps of a member's fake-logit over its face crops.

Grad-CAM (Selvaraju et al., 2017) weights the target layer's activation
channels by the mean gradient of the fake-logit and keeps the positive part:
a map of where, at that layer, evidence for "fake" was found. The maps are
those of the ``grad-cam`` package's ``GradCAM`` (``pytorch_grad_cam``; a test
compares them), computed here because importing that package costs a worker
about 250 MB (it imports scikit-learn, SciPy and pandas for other methods).
Hooks exist only inside ``with _grad_cam(...)``, so they are always removed.

Only the gradient with respect to the target layer's output is needed. While
a map is computed, every parameter is therefore frozen and the forward hook
hands the later layers a copy of the layer's output that starts a graph of
its own: autograd records and back-propagates only from the target layer to
the logit (the head), not through the whole backbone. The maps are
identical; the cost of a backward pass through the backbone is saved, and a
layer without weights of its own (an activation) serves as well as any.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import cv2
import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ensemble.media import RGBImage
from ensemble.members import TAP_GRADCAM, LoadedMember
from explain.errors import ExplainError
from explain.geometry import FloatMap
from explain.replay import Replay, logits_match

logger = logging.getLogger(__name__)

# The detectors' single output unit: the fake-logit.
FAKE_LOGIT = 0


class GradCam:
    """Grad-CAM at ``layer`` of ``model``'s fake-logit: called on a batch, it
    gives one map per sample (``[H, W]`` of the input, in ``[0, 1]``) and the
    model's outputs. The forward hook is removed by :meth:`close`
    (``_grad_cam`` does it)."""

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        self.model = model
        self._activations: Tensor | None = None
        self._gradients: Tensor | None = None
        self._handle: RemovableHandle = layer.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: object, output: Tensor) -> Tensor:
        # A leaf of its own: the gradient of the logit with respect to the
        # layer's output, whatever requires gradients before it (nothing, in
        # ``_grad_cam``). The clone lets later layers work on it in place.
        leaf = output.detach().requires_grad_(True)
        self._activations = leaf.detach()
        leaf.register_hook(self._keep_gradient)  # type: ignore[no-untyped-call]
        return leaf.clone()

    def _keep_gradient(self, grad: Tensor) -> None:
        self._gradients = grad.detach()

    def close(self) -> None:
        self._handle.remove()
        self._activations = self._gradients = None

    def __call__(self, x: Tensor) -> tuple[npt.NDArray[np.float32], Tensor]:
        self._activations = self._gradients = None
        outputs = self.model(x)
        self.model.zero_grad()
        if outputs.requires_grad:  # else the layer's output never reached the logit
            outputs[..., FAKE_LOGIT].sum().backward()
        if self._activations is None or self._gradients is None:
            raise ExplainError("the Grad-CAM layer took no part in the fake-logit")
        acts = self._activations.float().cpu().numpy()
        grads = self._gradients.float().cpu().numpy()
        # Channel weights: the mean gradient over the layer's positions.
        weights = grads.mean(axis=(2, 3))
        cams = np.maximum((weights[:, :, None, None] * acts).sum(axis=1), 0)
        size = (x.shape[-1], x.shape[-2])
        # Scaled to [0, 1], resized to the input, and scaled again, as the
        # package does (its second scaling follows the mean over layers).
        maps = np.stack([_unit(np.maximum(cv2.resize(_unit(c), size), 0)) for c in cams])
        self._activations = self._gradients = None
        return maps.astype(np.float32), outputs.detach()


def _unit(m: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """``m`` shifted to a minimum of 0 and divided by its new maximum."""
    m = np.asarray(m - m.min(), np.float32)
    return np.asarray(m / (1e-7 + m.max()), np.float32)


def target_layer(model: nn.Module, dotted: str) -> nn.Module:
    """The module at ``dotted`` path (the registry's ``gradcam_layer``)."""
    try:
        return model.get_submodule(dotted)
    except AttributeError as e:
        raise ExplainError(f"the model has no layer {dotted!r} for Grad-CAM") from e


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """No parameter of ``model`` requires gradients inside the block; the
    flags are restored and gradients dropped afterwards."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            if p.requires_grad != flag:
                p.requires_grad_(flag)
            p.grad = None


@contextmanager
def _grad_cam(model: nn.Module, layer: nn.Module, on: nn.Module | None = None) -> Iterator[GradCam]:
    """A ``GradCam`` over ``on`` (default ``model``) at ``layer``, with
    gradients recorded from ``layer``'s output only; hook and flags undone on
    exit."""
    with torch.inference_mode(False), torch.enable_grad(), _frozen(model):
        cam = GradCam(on if on is not None else model, layer)
        try:
            yield cam
        finally:
            cam.close()


def gradcam_maps(
    member: LoadedMember,
    crops: Sequence[RGBImage],
    batch_size: int,
    *,
    logits: npt.NDArray[np.floating] | None = None,
    activations: npt.NDArray[np.float32] | None = None,
) -> list[FloatMap]:
    """One Grad-CAM map per crop, ``[input_size, input_size]`` in ``[0, 1]``
    (each map scaled by its own maximum, as the package does).

    For a member whose ONNX graph returns its Grad-CAM layer (see
    :mod:`explain.replay`), only the layers after the target run in PyTorch:
    on ``logits`` and ``activations`` of these crops from the scoring pass
    when given (the logits of the crops as is, ``Inference.tapped_logits``,
    also for a member that scores them mirrored too), else on a pass made
    now. The maps are the same.
    """
    if not crops:
        return []
    layer = target_layer(member.model, member.spec.gradcam_layer)
    done: list[FloatMap] = []
    if TAP_GRADCAM in member.tap_names:
        if logits is None or activations is None:
            # The taps and the logits of the crops as is (a mirrored pass
            # would be thrown away).
            inference = member.infer(crops, batch_size, taps=(TAP_GRADCAM,), mirror=False)
            logits, activations = inference.tapped_logits, inference.taps[TAP_GRADCAM]
        if len(logits) != len(crops) or len(activations) != len(crops):
            raise ValueError("logits and activations must have one entry per crop")
        done = _replayed_maps(member, layer, crops, batch_size, logits, activations)
    return done + _torch_maps(member, crops[len(done) :], batch_size)


def _torch_maps(member: LoadedMember, crops: Sequence[RGBImage], batch_size: int) -> list[FloatMap]:
    """Plain PyTorch Grad-CAM, on the model with all its weights."""
    if not crops:
        return []
    maps: list[FloatMap] = []
    with member.whole_model() as model:
        layer = target_layer(model, member.spec.gradcam_layer)
        with _grad_cam(model, layer) as cam:
            for start in range(0, len(crops), batch_size):
                chunk = crops[start : start + batch_size]
                x = member.to_tensor(chunk)
                maps += list(cam(x)[0])
    return maps


def _replayed_maps(
    member: LoadedMember,
    layer: nn.Module,
    crops: Sequence[RGBImage],
    batch_size: int,
    logits: npt.NDArray[np.floating],
    activations: npt.NDArray[np.float32],
) -> list[FloatMap]:
    """Maps for as many crops as the replay reproduces the scoring pass's logits for."""
    replay = Replay(member.model, layer)
    maps: list[FloatMap] = []
    with _grad_cam(member.model, layer, on=replay) as cam:
        for start in range(0, len(crops), batch_size):
            chunk = crops[start : start + batch_size]
            expected = np.asarray(logits[start : start + batch_size], np.float32)
            chunk_act = np.ascontiguousarray(activations[start : start + batch_size])
            replay.activations = torch.from_numpy(chunk_act).requires_grad_(True)
            x = member.to_tensor(chunk)
            try:
                grayscale, outputs = cam(x)
            except RuntimeError:
                # Later layers that join an earlier tensor (a concat, a
                # residual over the target) fail on the replay's stand-in
                # input instead of giving other logits: the same fallback.
                replay.activations = None
                logger.warning(
                    "Grad-CAM replay of %s cannot be replayed from %s; using PyTorch",
                    member.name,
                    member.spec.gradcam_layer,
                    exc_info=True,
                )
                break
            matched = logits_match(outputs, expected, member.compute_precision)
            replay.activations = None
            if not matched:
                logger.warning(
                    "Grad-CAM replay of %s does not reproduce its logits; using PyTorch",
                    member.name,
                )
                break
            maps += list(grayscale)
    return maps
