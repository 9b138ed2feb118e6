"""Where inference runs: eager PyTorch, or ONNX Runtime on CPU.

On this project's reference CPU (2 cores, AVX-512) ONNX Runtime runs the
three members two to four times faster than eager PyTorch with channels_last
and batching (``bench/speed.py`` measures both), mostly because it fuses
batch norm and activations into the convolutions and plans memory once.
The torch module is kept beside the session: Grad-CAM and training need it.

An exported graph is cached on disk under a name that holds everything it
depends on (member, weights sha256, input size, torch version), so a worker
exports once per weights version. Models without a weights hash (tests,
benchmarks) are exported to a temporary file that is not kept.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

logger = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "onnxruntime"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime")
# Opset the exporter writes; ONNX Runtime >= 1.18 runs it.
ONNX_OPSET = 17


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def resolve_backend(backend: str, device: str) -> Literal["torch", "onnxruntime"]:
    """``auto`` means ONNX Runtime on CPU when it is installed, torch otherwise
    (on CUDA torch runs the models; a CUDA ONNX Runtime is not a dependency)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if backend == "onnxruntime":
        if not onnxruntime_available():
            raise ValueError("backend 'onnxruntime' was asked for but onnxruntime is not installed")
        if device != "cpu":
            raise ValueError(f"backend 'onnxruntime' runs on the CPU only, not on {device!r}")
        return "onnxruntime"
    return "onnxruntime" if device == "cpu" and onnxruntime_available() else "torch"


def onnx_cache_name(
    tag: str,
    weights_sha256: str,
    input_shape: Sequence[int],
    output_names: Sequence[str] = ("y",),
) -> str:
    """A file name that changes whenever the exported graph could change."""
    key = f"{tag}|{weights_sha256}|{tuple(input_shape)}|torch {torch.__version__}|{ONNX_OPSET}"
    if tuple(output_names) != ("y",):
        key += f"|{','.join(output_names)}"
    return f"{tag}_{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"


def export_onnx(
    model: nn.Module, example: torch.Tensor, path: Path, output_names: Sequence[str]
) -> None:
    """Export ``model`` (eval mode, NCHW input, dynamic batch) to ``path``
    atomically, so a crash never leaves a half-written cache file."""
    module = model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, suffix=".onnx.part")
    os.close(fd)
    tmp = Path(name)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter warns about tracing details that do not
            # apply to these static graphs.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example.contiguous(),),
                str(tmp),
                input_names=["x"],
                output_names=list(output_names),
                dynamic_axes={"x": {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


class OnnxRunner:
    """An ONNX Runtime session for one exported module."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path
        self.output_names: tuple[str, ...] = tuple(o.name for o in self._session.get_outputs())

    @classmethod
    def for_module(
        cls,
        model: nn.Module,
        example: torch.Tensor,
        *,
        tag: str,
        weights_sha256: str | None,
        cache_dir: Path | None,
        output_names: Sequence[str] = ("y",),
        threads: int = 0,
    ) -> OnnxRunner:
        """A session for ``model``, exported now or taken from the cache."""
        if weights_sha256 is None or cache_dir is None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"{tag}.onnx"
                export_onnx(model, example, path, output_names)
                return cls(path, threads)  # the session keeps the graph in memory
        name = onnx_cache_name(tag, weights_sha256, example.shape[1:], output_names)
        path = Path(cache_dir) / "onnx" / name
        if not path.exists():
            logger.info("exporting %s to ONNX (once per weights version): %s", tag, path)
            export_onnx(model, example, path, output_names)
        return cls(path, threads)

    def __call__(
        self, x: npt.NDArray[np.float32], outputs: Sequence[str] | None = None
    ) -> list[npt.NDArray[Any]]:
        """The graph's outputs for ``x``: all of them, or those named in
        ``outputs`` (in that order; the others are not copied out)."""
        names = None if outputs is None else list(outputs)
        result: list[npt.NDArray[Any]] = self._session.run(names, {"x": x})
        return result
