"""A detector member ready to run: model, preprocessing and calibration."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from ensemble.media import RGBImage
from ensemble.registry import REGISTRY, MemberSpec, Registry
from ensemble.runtime import OnnxRunner, resolve_backend
from ensemble.weights import load_model


@dataclass
class LoadedMember:
    """One member on its device. ``weights_sha256`` is ``None`` only for
    models made in tests and benchmarks.

    ``backend`` picks what computes :meth:`logits` (see :mod:`ensemble.runtime`);
    ``model`` is always the torch module, for Grad-CAM and training.
    """

    spec: MemberSpec
    model: nn.Module
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    temperature: float = 1.0
    weights_sha256: str | None = None
    device: str = "cpu"
    channels_last: bool = True
    backend: str = "torch"
    # Where exported ONNX graphs are cached (``None``: not cached).
    cache_dir: Path | None = None
    threads: int = 0
    _mean: Tensor = field(init=False, repr=False)
    _std: Tensor = field(init=False, repr=False)
    _runner: OnnxRunner | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self.model = self.model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1) * 255.0
        self.backend = resolve_backend(self.backend, self.device)
        if self.backend == "onnxruntime":
            example = torch.zeros(2, 3, self.input_size, self.input_size)
            self._runner = OnnxRunner.for_module(
                self.model.to(memory_format=torch.contiguous_format),
                example,
                tag=f"{self.name}_{self.input_size}",
                weights_sha256=self.weights_sha256,
                cache_dir=self.cache_dir,
                threads=self.threads,
            )
            if self.channels_last:
                self.model = self.model.to(memory_format=torch.channels_last)

    @property
    def name(self) -> str:
        return self.spec.name

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

    @torch.inference_mode()
    def logits(
        self,
        crops: Sequence[RGBImage],
        batch_size: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> npt.NDArray[np.float64]:
        """Raw fake-logits, one per crop, computed in batches."""
        out: list[npt.NDArray[np.float64]] = []
        for start in range(0, len(crops), batch_size):
            batch = self.to_tensor(crops[start : start + batch_size])
            if self._runner is not None:
                raw = self._runner(batch.contiguous().numpy())[0]
            else:
                raw = self.model(batch).float().cpu().numpy()
            out.append(np.asarray(raw, dtype=np.float64).reshape(-1))
            if on_batch is not None:
                on_batch(len(batch))
        return np.concatenate(out) if out else np.zeros(0)


def load_member(
    name: str,
    weights_dir: Path,
    device: str = "cpu",
    registry: Registry = REGISTRY,
    *,
    backend: str = "torch",
    cache_dir: Path | None = None,
    threads: int = 0,
) -> LoadedMember:
    """The named member with its installed, hash-checked weights."""
    spec = registry.get(name)
    model, manifest = load_model(spec, weights_dir)
    return LoadedMember(
        spec=spec,
        model=model,
        input_size=manifest.input_size,
        mean=manifest.mean,
        std=manifest.std,
        temperature=manifest.temperature,
        weights_sha256=manifest.weights_sha256,
        device=device,
        backend=backend,
        cache_dir=cache_dir,
        threads=threads,
    )
