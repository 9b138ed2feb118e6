from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble import runtime
from ensemble.members import TAP_GRADCAM, LoadedMember, load_member
from ensemble.registry import Registry, tiny_spec
from ensemble.runtime import (
    model_code_digest,
    onnx_cache_name,
    resolve_backend,
    resolve_precision,
)
from ensemble.weights import save_weights


def _crops(n: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _twins(
    tiny_member: Callable[..., LoadedMember], backend: str = "onnxruntime", precision: str = "fp32"
) -> tuple[LoadedMember, LoadedMember]:
    """A tiny member on the torch backend and the same model on ``backend``."""
    torch_member = tiny_member("tiny", 64)
    spec = torch_member.spec
    other = LoadedMember(
        spec=spec,
        model=torch_member.model,
        input_size=64,
        mean=spec.mean,
        std=spec.std,
        backend=backend,
        precision=precision,
    )
    return torch_member, other


def test_auto_backend_is_openvino_then_onnxruntime_on_cpu_and_torch_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert resolve_backend("auto", "cpu") == "openvino"  # both are dependencies
    assert resolve_backend("onnxruntime", "cpu") == "onnxruntime"
    monkeypatch.setattr(runtime, "openvino_available", lambda: False)
    assert resolve_backend("auto", "cpu") == "onnxruntime"
    with pytest.raises(ValueError, match="openvino is not installed"):
        resolve_backend("openvino", "cpu")
    monkeypatch.setattr(runtime, "onnxruntime_available", lambda: False)
    assert resolve_backend("auto", "cpu") == "torch"
    monkeypatch.undo()
    assert resolve_backend("auto", "cuda") == "torch"
    assert resolve_backend("torch", "cpu") == "torch"
    for backend in ("onnxruntime", "openvino"):
        with pytest.raises(ValueError, match="CPU only"):
            resolve_backend(backend, "cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("tensorrt", "cpu")


def test_a_device_this_process_cannot_use_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checked where members and BlazeFace load, so a worker told ``cuda``
    without a GPU says so instead of failing on torch's first transfer."""
    import torch

    from ensemble.errors import ConfigError
    from ensemble.runtime import check_device

    check_device("cpu")
    with pytest.raises(ConfigError, match="is not a device"):
        check_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"sees no CUDA GPU.*TRUSTTRACE_DEVICE=cpu"):
        check_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_device("cuda")
    check_device("cuda:0")
    with pytest.raises(ConfigError, match="sees 1 GPU"):
        check_device("cuda:1")


@pytest.mark.parametrize("has_bf16", [True, False])
def test_auto_precision_is_bf16_only_on_openvino_with_bf16_kernels(
    monkeypatch: pytest.MonkeyPatch, has_bf16: bool
) -> None:
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: has_bf16)
    assert resolve_precision("auto", "openvino", "cpu") == ("bf16" if has_bf16 else "fp32")
    assert resolve_precision("fp32", "openvino", "cpu") == "fp32"
    assert resolve_precision("auto", "onnxruntime", "cpu") == "fp32"
    assert resolve_precision("auto", "torch", "cpu") == "fp32"
    assert resolve_precision("bf16", "torch", "cpu") == "bf16"
    with pytest.raises(ValueError, match="needs the openvino or torch backend"):
        resolve_precision("bf16", "onnxruntime", "cpu")
    if not has_bf16:
        with pytest.raises(ValueError, match="no bf16 kernels"):
            resolve_precision("bf16", "openvino", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", "openvino", "cpu")


@pytest.mark.parametrize(
    "backend", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.openvino)]
)
def test_compiled_logits_equal_torch_logits(
    tiny_member: Callable[..., LoadedMember], backend: str
) -> None:
    torch_member, compiled = _twins(tiny_member, backend)
    assert compiled.backend == backend and compiled.compute_precision == "fp32"
    crops = _crops(5, 64)
    expected = torch_member.logits(crops, batch_size=2)
    got = compiled.logits(crops, batch_size=3)  # batch size is dynamic in the graph
    assert got.shape == (5,)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(expected, expected[0])  # the crops really differ


@pytest.mark.openvino
def test_openvino_bf16_stays_close_to_fp32(tiny_member: Callable[..., LoadedMember]) -> None:
    if not runtime.cpu_has_bf16():
        pytest.skip("this CPU has no bf16 kernels")
    torch_member, bf16 = _twins(tiny_member, "openvino", "auto")
    assert bf16.compute_precision == "bf16"
    crops = _crops(6, 64)
    expected = torch_member.logits(crops, batch_size=6)
    got = bf16.logits(crops, batch_size=6)
    # 8 bits of mantissa: close, but not the fp32 numbers (a graph compiled
    # in fp32 after all would give them exactly, or within 1e-6).
    np.testing.assert_allclose(got, expected, rtol=0.05, atol=0.05)
    assert np.abs(got - expected).max() > 1e-5


@pytest.mark.openvino
def test_openvino_keeps_its_compiled_model_in_the_cache(tmp_path: Path) -> None:
    registry = Registry()
    spec = registry.register(tiny_spec("tiny", 48))
    save_weights(spec.build().state_dict(), spec, tmp_path / "weights", input_size=48)
    cache = tmp_path / "cache"
    member = load_member(
        "tiny", tmp_path / "weights", registry=registry, backend="openvino", cache_dir=cache
    )
    blobs = sorted((cache / "openvino").glob("*.blob"))
    assert len(blobs) == 1 and len(list((cache / "onnx").glob("*.onnx"))) == 1
    stamp = blobs[0].stat().st_mtime_ns
    again = load_member(
        "tiny", tmp_path / "weights", registry=registry, backend="openvino", cache_dir=cache
    )
    assert sorted((cache / "openvino").glob("*.blob")) == blobs
    assert blobs[0].stat().st_mtime_ns == stamp  # loaded, not compiled again
    crops = _crops(3, 48)
    np.testing.assert_allclose(again.logits(crops, 4), member.logits(crops, 4))


def test_exported_graph_is_cached_per_weights_version(tmp_path: Path) -> None:
    registry = Registry()
    spec = registry.register(tiny_spec("tiny", 48))
    torch.manual_seed(3)
    save_weights(spec.build().state_dict(), spec, tmp_path / "weights", input_size=48)
    cache = tmp_path / "cache"
    member = load_member(
        "tiny", tmp_path / "weights", registry=registry, backend="onnxruntime", cache_dir=cache
    )
    graphs = list((cache / "onnx").glob("*.onnx"))
    assert len(graphs) == 1
    assert member.weights_sha256 is not None
    # Named by the weights, shape, outputs and the code of the exported
    # module (the member wrapped with its taps; see the test below).
    assert graphs[0].name.startswith("tiny_48_") and graphs[0].name != onnx_cache_name(
        "tiny_48", member.weights_sha256, (3, 48, 48), ("y", TAP_GRADCAM)
    )
    stamp = graphs[0].stat().st_mtime_ns
    again = load_member(
        "tiny", tmp_path / "weights", registry=registry, backend="onnxruntime", cache_dir=cache
    )
    assert graphs[0].stat().st_mtime_ns == stamp  # reused, not exported again
    crops = _crops(3, 48)
    np.testing.assert_allclose(again.logits(crops, 4), member.logits(crops, 4))
    # other weights, other graph
    torch.manual_seed(4)
    save_weights(spec.build().state_dict(), spec, tmp_path / "weights", input_size=48)
    load_member(
        "tiny", tmp_path / "weights", registry=registry, backend="onnxruntime", cache_dir=cache
    )
    assert len(list((cache / "onnx").glob("*.onnx"))) == 2


def test_the_scoring_pass_returns_the_gradcam_layer_only_when_asked(
    tiny_member: Callable[..., LoadedMember],
) -> None:
    torch_member, ort_member = _twins(tiny_member)
    crops = _crops(5, 64)
    assert ort_member.tap_names == (TAP_GRADCAM,)
    assert torch_member.tap_names == ()
    assert ort_member.infer(crops, 2).taps == {}
    assert ort_member.infer(crops, 2, taps=("attention",)).taps == {}  # it has none
    assert set(ort_member.infer(crops, 2, taps=(TAP_GRADCAM,)).taps) == {TAP_GRADCAM}
    tapped = ort_member.infer(crops, 2, taps=True)
    np.testing.assert_allclose(tapped.logits, ort_member.logits(crops, 4), rtol=1e-5, atol=1e-6)
    # the same tensor PyTorch's layer computes, in crop order, across batches
    layer = torch_member.model.get_submodule(torch_member.spec.gradcam_layer)
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        torch_member.logits(crops, 5)
    finally:
        handle.remove()
    expected = seen[0].contiguous().numpy()
    assert tapped.taps[TAP_GRADCAM].shape == expected.shape
    np.testing.assert_allclose(tapped.taps[TAP_GRADCAM], expected, rtol=1e-4, atol=1e-4)


def test_a_change_to_a_members_code_names_a_new_graph(tmp_path: Path, monkeypatch) -> None:
    """A cached graph is keyed by the code that builds it, not only the weights:
    after an edit to a member's forward, machines with a cache re-export."""
    import importlib

    monkeypatch.syspath_prepend(str(tmp_path))
    source = tmp_path / "edited_member.py"
    body = (
        "import torch\n\n"
        "class Member(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 1, 3)\n\n"
        "    def forward(self, x):\n"
        "        return self.conv(x).mean((2, 3)){}\n"
    )
    source.write_text(body.format(""))
    module = importlib.import_module("edited_member")
    before = model_code_digest(module.Member())
    assert model_code_digest(module.Member()) == before  # stable
    source.write_text(body.format(" * 2.0"))
    module = importlib.reload(module)
    after = model_code_digest(module.Member())
    assert after != before
    names = {onnx_cache_name("m_48", "sha", (3, 48, 48), ("y",), code) for code in (before, after)}
    assert len(names) == 2
    monkeypatch.delitem(sys.modules, "edited_member")
