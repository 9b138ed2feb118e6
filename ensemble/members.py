"""A detector member ready to run: model, preprocessing and calibration."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from ensemble.calibration import input_record
from ensemble.crops import CropPolicy
from ensemble.errors import WeightsError
from ensemble.media import RGBImage
from ensemble.registry import REGISTRY, MemberSpec, Registry
from ensemble.runtime import (
    OnnxRunner,
    OpenVinoRunner,
    check_device,
    exported_graph,
    release_memory,
    resolve_backend,
    resolve_precision,
    runner_for_graph,
)
from ensemble.weights import load_model

# Intermediate tensors ("taps") the exported ONNX graph returns besides the
# logit, for explanations: the output of the member's Grad-CAM layer, and the
# attention map of a member that learns one. Explaining a video then reuses
# the scoring pass instead of running the network again; scoring alone does
# not ask for them, and ONNX Runtime does not copy out what is not asked for.
TAP_GRADCAM = "gradcam_layer"
TAP_ATTENTION = "attention"

# The image the layers before the Grad-CAM layer see when explanations
# replay a member's head (``explain.replay``), and when the member finds out
# which of its modules run after that layer: one small image, always the same
# shape, so oneDNN sets its kernels up once.
DUMMY_SIDE = 32


def _placeholder(t: Tensor) -> Tensor:
    """A tensor of ``t``'s shape and dtype that holds one element: zeros
    with every stride 0 (a kernel that wants it contiguous copies it for the
    call only)."""
    return torch.zeros((), dtype=t.dtype, device=t.device).expand(t.shape)


def _when_modules_run(model: nn.Module, layer: nn.Module) -> tuple[set[int], set[int]]:
    """The ids of the modules of ``model`` that start running before
    ``layer`` has returned (``layer`` itself and everything above it
    included), and of those that start after it, in one forward pass on a
    dummy image."""
    before: set[int] = set()
    after: set[int] = set()
    done = [False]

    def pre(module: nn.Module, args: object) -> None:
        (after if done[0] else before).add(id(module))

    def post(module: nn.Module, args: object, output: object) -> None:
        done[0] = True

    handles = [m.register_forward_pre_hook(pre) for m in model.modules()]
    handles.append(layer.register_forward_hook(post))
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, DUMMY_SIDE, DUMMY_SIDE, device=device))
    finally:
        for h in handles:
            h.remove()
    return before, after


def keep_head_only(model: nn.Module, layer: nn.Module) -> int:
    """Free the weights of every module of ``model`` that runs before
    ``layer`` returns (``layer`` included), keeping those of the modules
    that run after it: all a Grad-CAM replay needs, since it replaces the
    layer's output with the activations the compiled graph returned and the
    layers before it compute on a dummy image whose result is discarded.
    Each freed parameter and buffer becomes a one-element placeholder of the
    same shape (:func:`_placeholder`), so the network still runs (on zeros).
    A module that also runs after the layer, or never runs, keeps its
    weights. Returns the bytes freed."""
    before, after = _when_modules_run(model, layer)
    early = [m for m in model.modules() if id(m) in before and id(m) not in after]
    freed = 0
    for module in early:
        for name, param in list(module._parameters.items()):
            if param is not None and param.numel() > 1:
                freed += param.numel() * param.element_size()
                module._parameters[name] = nn.Parameter(
                    _placeholder(param.detach()), requires_grad=param.requires_grad
                )
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.numel() > 1:
                freed += buf.numel() * buf.element_size()
                module._buffers[name] = _placeholder(buf)
    return freed


class _Tapped(nn.Module):
    """The member's logit followed by its taps, for export."""

    def __init__(self, model: nn.Module, layer: nn.Module | None, attention: bool) -> None:
        super().__init__()
        self.model = model
        self._layer = [layer]  # a list: not registered as a second submodule
        self._attention = attention

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        captured: list[Tensor] = []
        layer = self._layer[0]
        handle = (
            None
            if layer is None
            else layer.register_forward_hook(lambda m, i, o: captured.append(o))
        )
        try:
            if self._attention:
                logit, attention = self.model.forward_with_attention(x)  # type: ignore[operator]
                extra: tuple[Tensor, ...] = (attention,)
            else:
                logit, extra = self.model(x), ()
        finally:
            if handle is not None:
                handle.remove()
        return (logit, *captured[-1:], *extra)

    @staticmethod
    def outputs(layer: nn.Module | None, attention: bool) -> tuple[str, ...]:
        return (
            "y",
            *((TAP_GRADCAM,) if layer is not None else ()),
            *((TAP_ATTENTION,) if attention else ()),
        )


@dataclass(frozen=True)
class Inference:
    """Raw fake-logits ``[N]`` and, when asked for and the backend has them,
    taps by name, each ``[N, ...]`` in the order of the crops.
    ``tapped_logits`` are the logits of the pass the taps come from: the
    crops as is, which differ from ``logits`` when the member also scores
    them mirrored (the Grad-CAM replay checks itself against these)."""

    logits: npt.NDArray[np.float64]
    taps: Mapping[str, npt.NDArray[np.float32]]
    tapped_logits: npt.NDArray[np.float64]


@dataclass
class LoadedMember:
    """One member on its device. ``weights_sha256`` is ``None`` only for
    models made in tests and benchmarks.

    ``backend`` picks what computes :meth:`logits` (see :mod:`ensemble.runtime`);
    ``model`` is always the torch module, for Grad-CAM and training. On the
    compiled backends, a member that can ``reload`` its model (one loaded
    from installed weights) keeps in ``model`` only the weights of the layers
    after its Grad-CAM layer, all the Grad-CAM replay needs
    (:func:`keep_head_only`); :meth:`full_model` brings the others back.
    """

    spec: MemberSpec
    model: nn.Module
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    temperature: float = 1.0
    # Calibrated probability: sigmoid(logit / temperature + bias).
    bias: float = 0.0
    weights_sha256: str | None = None
    device: str = "cpu"
    channels_last: bool = True
    backend: str = "torch"
    # Where exported ONNX graphs are cached (``None``: not cached).
    cache_dir: Path | None = None
    threads: int = 0
    # "auto" (bf16 on OpenVINO where the CPU has bf16 kernels, else fp32),
    # "fp32" or "bf16"; :attr:`compute_precision` is what it resolved to.
    precision: str = "auto"
    # The face crop the weights were trained for (their manifest's); None:
    # the registry's policy for the member.
    crop_override: CropPolicy | None = None
    # Score each crop as is and mirrored left to right and average the two
    # raw logits (test-time flip). Taps come from the pass as is, so the
    # explanations show what the model saw in the face as uploaded.
    mirror: bool = False
    # Builds the model again with its weights (``load_member`` sets it).
    reload: Callable[[], nn.Module] | None = field(default=None, repr=False)
    _mean: Tensor = field(init=False, repr=False)
    _std: Tensor = field(init=False, repr=False)
    _runner: OnnxRunner | OpenVinoRunner | None = field(init=False, repr=False, default=None)
    compute_precision: str = field(init=False, default="fp32")
    # Whether ``model`` holds only the weights after the Grad-CAM layer.
    head_only: bool = field(init=False, default=False)

    @property
    def inputs(self) -> dict[str, Any]:
        """How it prepares faces (:func:`ensemble.calibration.input_record`),
        as its manifest says (``crop`` ``None``: the registry's policy)."""
        crop = None if self.crop_override is None else self.crop_override.to_dict()
        return input_record(self.input_size, crop, self.mean, self.std)

    def __post_init__(self) -> None:
        # Outside inference mode even when made inside it: converting the
        # memory format there would turn the parameters into inference
        # tensors, which Grad-CAM and training cannot use afterwards.
        with torch.inference_mode(False):
            self._prepare()

    def _prepare(self) -> None:
        check_device(self.device)
        backend = resolve_backend(self.backend, self.device)
        precision = resolve_precision(self.precision, backend, self.device)
        self.backend, self.compute_precision = backend, precision
        self.model = self.model.to(self.device).eval()
        self._mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1) * 255.0
        if backend != "torch":
            self._compile(backend, precision)
        elif self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def _compile(
        self, backend: Literal["onnxruntime", "openvino"], precision: Literal["fp32", "bf16"]
    ) -> None:
        """The runner of the exported graph. A member that can reload its
        weights drops those before its Grad-CAM layer once the graph holds
        them, before the graph is compiled, so the two never coexist."""
        example = torch.zeros(2, 3, self.input_size, self.input_size)
        model = self.model.to(memory_format=torch.contiguous_format)
        try:
            layer: nn.Module | None = model.get_submodule(self.spec.gradcam_layer)
        except AttributeError:
            layer = None
        attention = self.spec.has_attention and hasattr(model, "forward_with_attention")
        outputs = _Tapped.outputs(layer, attention)
        with (
            torch.no_grad(),
            exported_graph(
                _Tapped(model, layer, attention),
                example,
                tag=f"{self.name}_{self.input_size}",
                weights_sha256=self.weights_sha256,
                cache_dir=self.cache_dir,
                output_names=outputs,
            ) as path,
        ):
            if self.channels_last:
                # Before keep_head_only: converting a placeholder would make
                # it full size again.
                self.model = self.model.to(memory_format=torch.channels_last)
            if self.reload is not None and layer is not None:
                keep_head_only(self.model, layer)
                self.head_only = True
                release_memory()
            self._runner = runner_for_graph(
                backend,
                path,
                cache_dir=None if self.weights_sha256 is None else self.cache_dir,
                output_names=outputs,
                threads=self.threads,
                precision=precision,
                warmup=example.numpy(),
            )

    def full_model(self) -> nn.Module:
        """The torch module with all its weights (:attr:`model`, reloaded
        first when it holds only the head): for plain PyTorch Grad-CAM."""
        if self.head_only:
            assert self.reload is not None
            with torch.inference_mode(False):
                model = self.reload().to(self.device).eval()
                if self.channels_last:
                    model = model.to(memory_format=torch.channels_last)
            self.model, self.head_only = model, False
        return self.model

    @contextmanager
    def whole_model(self) -> Iterator[nn.Module]:
        """:meth:`full_model` for the block. A member that held only its head
        holds only its head again afterwards: a fallback to plain PyTorch
        (rare) reloads the weights each time instead of keeping the whole
        network (about 260 MB for B7) in the worker for good."""
        held_head_only = self.head_only
        model = self.full_model()
        try:
            yield model
        finally:
            if held_head_only and not self.head_only:
                # Outside inference mode (a caller may be inside it): the
                # placeholders must stay ordinary tensors for Grad-CAM.
                with torch.inference_mode(False):
                    keep_head_only(self.model, self.model.get_submodule(self.spec.gradcam_layer))
                self.head_only = True
                release_memory()

    @property
    def crop(self) -> CropPolicy:
        """How faces are cut for this member."""
        return self.spec.crop if self.crop_override is None else self.crop_override

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def graph_path(self) -> Path | None:
        """The ONNX graph this member runs (``None`` on the torch backend;
        a deleted temporary file when it has no weights hash or cache)."""
        return self._runner.path if self._runner is not None else None

    @property
    def tap_names(self) -> tuple[str, ...]:
        """The taps :meth:`infer` can return (none on the torch backend)."""
        return self._runner.output_names[1:] if self._runner is not None else ()

    def to_tensor(self, crops: Sequence[RGBImage]) -> Tensor:
        """uint8 ``[H, W, 3]`` crops -> normalised float ``[B, 3, H, W]``."""
        x = torch.from_numpy(np.stack(crops)).to(self.device)
        x = x.permute(0, 3, 1, 2).float()
        x = (x - self._mean) / self._std
        return (
            x.contiguous(memory_format=torch.channels_last)
            if self.channels_last
            else x.contiguous()
        )

    def logits(
        self,
        crops: Sequence[RGBImage],
        batch_size: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> npt.NDArray[np.float64]:
        """Raw fake-logits, one per crop, computed in batches."""
        return self.infer(crops, batch_size, on_batch).logits

    @torch.inference_mode()
    def infer(
        self,
        crops: Sequence[RGBImage],
        batch_size: int,
        on_batch: Callable[[int], None] | None = None,
        *,
        taps: bool | Collection[str] = False,
        mirror: bool | None = None,
    ) -> Inference:
        """Logits, one per crop, computed in batches; with ``taps`` (``True``
        for all, or the names wanted), also those of :attr:`tap_names` from
        the same pass. With :attr:`mirror` (or ``mirror``, when given), each
        logit is the mean of the crop's and its mirror image's (the taps are
        the crop's); ``mirror=False`` skips the mirrored pass for callers
        that want only the taps."""
        mirror = self.mirror if mirror is None else mirror
        wanted = self.tap_names if taps is True else () if taps is False else tuple(taps)
        names = ("y", *(n for n in self.tap_names if n in wanted))
        out: list[npt.NDArray[np.float64]] = []
        as_is: list[npt.NDArray[np.float64]] = []
        kept: dict[str, list[npt.NDArray[np.float32]]] = {n: [] for n in names[1:]}
        for start in range(0, len(crops), batch_size):
            batch = self.to_tensor(crops[start : start + batch_size])
            raw, extra = self._forward(batch, names)
            for name, value in zip(names[1:], extra, strict=True):
                kept[name].append(value)
            as_is.append(raw)
            if mirror:
                mirrored, _ = self._forward(batch.flip(-1), names[:1])
                raw = (raw + mirrored) / 2.0
            out.append(raw)
            if on_batch is not None:
                on_batch(len(batch))
        return Inference(
            np.concatenate(out) if out else np.zeros(0),
            {name: np.concatenate(parts) for name, parts in kept.items() if parts},
            np.concatenate(as_is) if as_is else np.zeros(0),
        )

    def _forward(
        self, batch: Tensor, names: tuple[str, ...]
    ) -> tuple[npt.NDArray[np.float64], list[npt.NDArray[np.float32]]]:
        """Raw logits ``[N]`` of one batch and the taps in ``names[1:]``."""
        if self._runner is not None:
            raw, *extra = self._runner(batch.contiguous().numpy(), names)
            taps = [np.asarray(value, dtype=np.float32) for value in extra]
        else:
            with torch.autocast(
                batch.device.type, torch.bfloat16, enabled=self.compute_precision == "bf16"
            ):
                raw = self.model(batch).float().cpu().numpy()
            taps = []
        return np.asarray(raw, dtype=np.float64).reshape(-1), taps


def load_member(
    name: str,
    weights_dir: Path,
    device: str = "cpu",
    registry: Registry = REGISTRY,
    *,
    backend: str = "torch",
    cache_dir: Path | None = None,
    threads: int = 0,
    precision: str = "auto",
    mirror: bool = False,
) -> LoadedMember:
    """The named member with its installed, hash-checked weights; with
    ``mirror``, it scores each crop as is and mirrored (:class:`LoadedMember`)."""
    spec = registry.get(name)
    model, manifest = load_model(spec, weights_dir)

    def reload() -> nn.Module:
        again, again_manifest = load_model(spec, weights_dir)
        if again_manifest.weights_sha256 != manifest.weights_sha256:
            raise WeightsError(f"the weights of '{name}' changed since the worker loaded them")
        return again

    return LoadedMember(
        spec=spec,
        model=model,
        input_size=manifest.input_size,
        mean=manifest.mean,
        std=manifest.std,
        temperature=manifest.temperature,
        bias=manifest.bias,
        weights_sha256=manifest.weights_sha256,
        device=device,
        backend=backend,
        cache_dir=cache_dir,
        threads=threads,
        precision=precision,
        mirror=mirror,
        crop_override=None if manifest.crop is None else manifest.crop_policy(spec.crop),
        reload=reload,
    )
