"""Where inference runs: eager PyTorch, ONNX Runtime or OpenVINO on CPU.

On this project's reference CPU (2 cores, AVX-512, AMX) OpenVINO in bf16 runs
the members two to four times faster than ONNX Runtime in fp32, which runs
them about twice as fast as eager PyTorch (``bench/speed.py`` measures all
of them): both fuse batch norm and activations into the convolutions and
plan memory once, and OpenVINO's bf16 kernels use AMX tiles (or AVX-512 BF16)
where the CPU has them. OpenVINO is the default on CPU (``resolve_backend``).
Beside the compiled graph, the torch module keeps what Grad-CAM needs (the
weights after the Grad-CAM layer, ``ensemble.members.keep_head_only``), and
:func:`release_memory` drops what compilation leaves duplicated.

Precision: ``auto`` is bf16 where the CPU plugin reports BF16 among its
optimisation capabilities (AMX or AVX-512 BF16) and the backend is OpenVINO,
fp32 everywhere else. bf16 keeps 8 bits of mantissa: scores move by about
0.01 at most on the shipped weights (``tests/test_precision_guard.py``).

An exported graph is cached on disk under a name that holds everything it
depends on (member, weights sha256, input size, torch version), so a worker
exports once per weights version. Models without a weights hash (tests,
benchmarks) are exported to a temporary file that is not kept.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from ensemble.config import BACKENDS, PRECISIONS
from ensemble.errors import ConfigError

logger = logging.getLogger(__name__)

# Opset the exporter writes; ONNX Runtime >= 1.18 runs it.
ONNX_OPSET = 17


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def check_device(device: str) -> None:
    """Raise :class:`ConfigError` unless this process can compute on the
    torch ``device`` (``TRUSTTRACE_DEVICE``): a worker told ``cuda`` that sees
    no GPU (its container was not given one) failed every analysis at the
    first tensor moved there, with torch's own message. The web process does
    not call this: it may run without the workers' GPU."""
    try:
        where = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"TRUSTTRACE_DEVICE={device!r} is not a device: {e}") from e
    if where.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ConfigError(
            f"TRUSTTRACE_DEVICE={device!r} but this process sees no CUDA GPU (no driver, "
            "a CPU build of torch, or a container not given the GPU: compose's "
            "deploy.resources.reservations.devices); set TRUSTTRACE_DEVICE=cpu or pass the GPU"
        )
    count = torch.cuda.device_count()
    if where.index is not None and where.index >= count:
        raise ConfigError(f"TRUSTTRACE_DEVICE={device!r} but this process sees {count} GPU(s)")


def resolve_backend(backend: str, device: str) -> Literal["torch", "onnxruntime", "openvino"]:
    """``auto`` means OpenVINO on CPU when it is installed, else ONNX Runtime
    when that is, else torch (on CUDA torch runs the models; the CUDA builds
    of the other two are not dependencies)."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if backend in ("onnxruntime", "openvino"):
        available = onnxruntime_available() if backend == "onnxruntime" else openvino_available()
        if not available:
            raise ConfigError(f"backend {backend!r} was asked for but {backend} is not installed")
        if device != "cpu":
            raise ConfigError(f"backend {backend!r} runs on the CPU only, not on {device!r}")
        return backend
    if device != "cpu":
        return "torch"
    # OpenVINO first: bf16 on AMX makes it the fastest here (README,
    # "Speed"). A worker loads its members once per pool child and keeps
    # them; the crash seen when a single test process compiled and freed
    # hundreds of models and then forked is why the in-process test suite
    # pins ONNX Runtime (settings/test.py), while the real-worker tests run
    # this default.
    if openvino_available():
        return "openvino"
    return "onnxruntime" if onnxruntime_available() else "torch"


@functools.cache
def openvino_core() -> Any:
    """The process's OpenVINO Core (made on first use)."""
    import openvino as ov

    return ov.Core()


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin has bf16 kernels here (AMX or AVX-512 BF16)."""
    if not openvino_available():
        return False

    caps = openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in caps


def resolve_precision(precision: str, backend: str, device: str) -> Literal["fp32", "bf16"]:
    """The precision a member computes in. ``auto``: bf16 on the OpenVINO
    backend where the CPU has bf16 kernels, fp32 otherwise. ``bf16`` is
    refused where it would be emulated or is not implemented (ONNX Runtime)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return "fp32"
    if backend == "onnxruntime":
        if precision == "bf16":
            raise ConfigError("precision 'bf16' needs the openvino or torch backend")
        return "fp32"
    if backend == "openvino":
        if cpu_has_bf16():
            return "bf16"
        if precision == "bf16":
            raise ConfigError("precision 'bf16' was asked for but this CPU has no bf16 kernels")
        return "fp32"
    # torch: bf16 autocast only on request (on CPU eager bf16 is far slower
    # than OpenVINO's, and on CUDA the caller asks for it explicitly).
    return "bf16" if precision == "bf16" else "fp32"


def model_code_digest(model: nn.Module) -> str:
    """A digest of the source of every module (outside torch itself, whose
    version the cache key holds) that defines one of ``model``'s layers: the
    member's own code and timm's. A change to how a member computes its
    output then gives its exported graph a new name."""
    modules = sorted(
        {type(m).__module__ for m in model.modules()}
        - {n for n in sys.modules if n == "torch" or n.startswith("torch.")}
    )
    digest = hashlib.sha256()
    for name in modules:
        digest.update(name.encode())
        source = getattr(sys.modules.get(name), "__file__", None)
        if source and Path(source).is_file():
            digest.update(Path(source).read_bytes())
    return digest.hexdigest()


def onnx_cache_name(
    tag: str,
    weights_sha256: str,
    input_shape: Sequence[int],
    output_names: Sequence[str] = ("y",),
    code: str = "",
) -> str:
    """A file name that changes whenever the exported graph could change:
    the weights, the input shape, the outputs, torch and the opset, and
    ``code`` (:func:`model_code_digest`)."""
    key = f"{tag}|{weights_sha256}|{tuple(input_shape)}|torch {torch.__version__}|{ONNX_OPSET}"
    if tuple(output_names) != ("y",):
        key += f"|{','.join(output_names)}"
    if code:
        key += f"|code {code}"
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

    def __call__(
        self, x: npt.NDArray[np.float32], outputs: Sequence[str] | None = None
    ) -> list[npt.NDArray[Any]]:
        """The graph's outputs for ``x``: all of them, or those named in
        ``outputs`` (in that order; the others are not copied out)."""
        names = None if outputs is None else list(outputs)
        result: list[npt.NDArray[Any]] = self._session.run(names, {"x": x})
        return result


# madvise(2) advice that drops a mapping's pages from the process (Linux).
MADV_DONTNEED = 4
# OpenVINO's model cache folders in use by this process (see OpenVinoRunner).
_OPENVINO_CACHE_DIRS: set[Path] = set()


@functools.cache
def _libc() -> Any:
    """The C library when it is glibc on Linux (``None`` elsewhere)."""
    if not Path("/proc/self/maps").exists():
        return None
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def _cached_blob_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's read-only mappings of OpenVINO's
    cached compiled models."""
    if not _OPENVINO_CACHE_DIRS:
        return []
    folders = tuple(str(d) + os.sep for d in _OPENVINO_CACHE_DIRS)
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or "w" in parts[1] or not parts[5].startswith(folders):
            continue
        start, end = (int(v, 16) for v in parts[0].split("-"))
        ranges.append((start, end))
    return ranges


def release_memory() -> int:
    """Hand back to the OS memory this process holds but does not use.

    - OpenVINO maps its cached compiled model (the fp32 weights) and, at the
      first inference, repacks the weights into its own buffers (bf16 where
      it computes in bf16); the mapped pages then duplicate them (about the
      size of the ONNX graphs). They are dropped from the process; being
      read-only pages of a file, any page touched again is read back from it.
    - glibc keeps freed heap memory (freed weights, the previous analysis's
      frames) for reuse; ``malloc_trim`` returns it.

    Does nothing where /proc or glibc are missing. Returns the bytes of
    mappings dropped."""
    libc = _libc()
    if libc is None:
        return 0
    dropped = 0
    for start, end in _cached_blob_mappings():
        if libc.madvise(start, end - start, MADV_DONTNEED) == 0:
            dropped += end - start
        else:
            logger.debug("madvise failed on a cached model mapping: errno %s", ctypes.get_errno())
    libc.malloc_trim(0)
    return dropped


# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# TRUSTTRACE_MALLOC: "keep" (or unset) keeps freed memory, "system" leaves
# glibc's defaults.
MALLOC_CHOICES = ("keep", "system")


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it
    back to the kernel, for the rest of this process. Returns whether it did.

    For offline jobs that run PyTorch eagerly on big batches (training,
    export, evaluation), not for workers, which hand memory back on purpose
    (:func:`release_memory`). By default glibc serves every block over 32 MB
    (a batch's activations) with a fresh ``mmap`` and unmaps it when freed,
    so each batch faults every page of its activations in again: B4's fp32
    validation pass at 224 px spent more time in the kernel than computing
    (``python -m bench.malloc_cost``). With ``mmap`` off and no trimming the
    heap keeps those pages; the process's peak memory is unchanged, but it
    stays at its peak until it exits.

    ``TRUSTTRACE_MALLOC=system`` leaves glibc's defaults alone (``keep``, the
    default, does this); any other value is a :class:`ConfigError`. Does
    nothing where glibc is missing."""
    choice = os.environ.get("TRUSTTRACE_MALLOC", "").strip().lower() or "keep"
    if choice not in MALLOC_CHOICES:
        raise ConfigError(
            f"TRUSTTRACE_MALLOC={os.environ['TRUSTTRACE_MALLOC']!r} is not one of "
            f"{', '.join(MALLOC_CHOICES)}"
        )
    if choice == "system":
        return False
    libc = _libc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # mallopt returns 1 on success; the largest int leaves trimming off.
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    if not ok:
        logger.debug("mallopt refused the settings; glibc's defaults stay")
    return bool(ok)


class OpenVinoRunner:
    """A compiled OpenVINO model for one exported ONNX graph.

    ``cache_dir`` turns on OpenVINO's model cache: the compiled blob is kept
    under a key of the graph file and the compile options, so a worker that
    restarts loads it instead of compiling again. ``warmup``, an input, is
    run once at once: the first inference repacks the weights, after which
    :func:`release_memory` can drop the cached blob's pages.
    """

    def __init__(
        self,
        path: Path,
        threads: int = 0,
        precision: Literal["fp32", "bf16"] = "fp32",
        cache_dir: Path | None = None,
        output_names: Sequence[str] | None = None,
        warmup: npt.NDArray[np.float32] | None = None,
    ) -> None:

        # One Core per process, kept by every compiled model made from it: a
        # Core freed while its compiled models live is not supported.
        self._core = openvino_core()
        config: dict[str, object] = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
            "PERFORMANCE_HINT": "LATENCY",
        }
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache_dir)
            _OPENVINO_CACHE_DIRS.add(Path(cache_dir).resolve())
        # A path (not a read model) lets a cached blob skip reading the graph.
        self._compiled = self._core.compile_model(str(path), "CPU", config)
        self._request = self._compiled.create_infer_request()
        self.path = path
        self.precision = precision
        # Outputs come in the graph's order; one can carry several tensor
        # names, so the exporter's names are taken when the caller knows them.
        self.output_names: tuple[str, ...] = (
            tuple(output_names)
            if output_names is not None
            else tuple(o.get_any_name() for o in self._compiled.outputs)
        )
        if len(self.output_names) != len(self._compiled.outputs):
            raise ValueError(
                f"{path} has {len(self._compiled.outputs)} outputs, not {output_names}"
            )
        if warmup is not None:
            self._request.infer({"x": warmup})

    def __call__(
        self, x: npt.NDArray[np.float32], outputs: Sequence[str] | None = None
    ) -> list[npt.NDArray[Any]]:
        """The graph's outputs for ``x``, like :meth:`OnnxRunner.__call__`.
        Copies: the request's output buffers are reused by the next call."""
        result = self._request.infer({"x": x})
        by_name = dict(zip(self.output_names, result.values(), strict=True))
        names = self.output_names if outputs is None else tuple(outputs)
        return [np.array(by_name[n], copy=True) for n in names]


@contextmanager
def exported_graph(
    model: nn.Module,
    example: torch.Tensor,
    *,
    tag: str,
    weights_sha256: str | None,
    cache_dir: Path | None,
    output_names: Sequence[str] = ("y",),
) -> Iterator[Path]:
    """The ONNX graph of ``model``: from the cache (exported once per weights
    version), or, without a weights hash or cache, a temporary file that is
    deleted when the block ends (the runners keep the graph in memory)."""
    if weights_sha256 is None or cache_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{tag}.onnx"
            export_onnx(model, example, path, output_names)
            yield path
        return
    name = onnx_cache_name(
        tag, weights_sha256, example.shape[1:], output_names, model_code_digest(model)
    )
    path = Path(cache_dir) / "onnx" / name
    if not path.exists():
        logger.info("exporting %s to ONNX (once per weights version): %s", tag, path)
        export_onnx(model, example, path, output_names)
    yield path


def runner_for_graph(
    backend: Literal["onnxruntime", "openvino"],
    path: Path,
    *,
    cache_dir: Path | None,
    output_names: Sequence[str] = ("y",),
    threads: int = 0,
    precision: Literal["fp32", "bf16"] = "fp32",
    warmup: npt.NDArray[np.float32] | None = None,
) -> OnnxRunner | OpenVinoRunner:
    """A runner for the exported graph at ``path`` on ``backend``. With a
    cache folder (a graph of known weights), OpenVINO keeps its compiled
    model under ``cache_dir/openvino``; it runs ``warmup`` once."""
    if backend == "openvino":
        return OpenVinoRunner(
            path,
            threads,
            precision,
            None if cache_dir is None else cache_dir / "openvino",
            output_names,
            warmup=warmup,
        )
    if precision != "fp32":
        raise ConfigError(f"ONNX Runtime members run in fp32, not {precision}")
    return OnnxRunner(path, threads)


def runner_for_module(
    backend: Literal["onnxruntime", "openvino"],
    model: nn.Module,
    example: torch.Tensor,
    *,
    tag: str,
    weights_sha256: str | None,
    cache_dir: Path | None,
    output_names: Sequence[str] = ("y",),
    threads: int = 0,
    precision: Literal["fp32", "bf16"] = "fp32",
) -> OnnxRunner | OpenVinoRunner:
    """A runner for ``model`` on ``backend``. With a weights hash and a cache
    folder, OpenVINO also keeps its compiled model under ``cache_dir/openvino``."""
    with exported_graph(
        model,
        example,
        tag=tag,
        weights_sha256=weights_sha256,
        cache_dir=cache_dir,
        output_names=output_names,
    ) as path:
        return runner_for_graph(
            backend,
            path,
            cache_dir=None if weights_sha256 is None else cache_dir,
            output_names=output_names,
            threads=threads,
            precision=precision,
            warmup=example.contiguous().numpy(),
        )
