"""int8 members: calibrated graphs only, refused clearly without one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from ensemble.config import AnalysisConfig
from ensemble.members import TAP_GRADCAM, load_member
from ensemble.quantize import Int8NotCalibratedError, calibrate_int8, int8_graph_path
from ensemble.registry import Registry, tiny_spec
from ensemble.weights import save_weights


def _crops(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth, face-sized blobs rather than noise: calibration data should
    look like what the member will see."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.35)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        colour = rng.uniform(60, 220, 3)
        img = blob[..., None] * colour + rng.normal(0, 6, (size, size, 3)) + 20
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


@pytest.fixture
def installed(tmp_path: Path) -> tuple[Registry, Path, Path]:
    registry = Registry()
    spec = registry.register(tiny_spec("tiny", 48))
    torch.manual_seed(5)
    model = spec.build()
    with torch.no_grad():  # a head that spreads the scores, so closeness means something
        model.fc.weight.mul_(200.0)
        model.fc.bias.zero_()
    save_weights(model.state_dict(), spec, tmp_path / "weights", input_size=48)
    return registry, tmp_path / "weights", tmp_path / "cache"


def test_an_int8_member_without_a_calibrated_graph_is_refused(installed) -> None:
    registry, weights, cache = installed
    with pytest.raises(Int8NotCalibratedError, match="calibrate_int8"):
        load_member("tiny", weights, registry=registry, backend="onnxruntime",
                    cache_dir=cache, precision="int8")  # fmt: skip
    with pytest.raises(ValueError, match="onnxruntime backend"):
        load_member("tiny", weights, registry=registry, backend="torch",
                    cache_dir=cache, precision="int8")  # fmt: skip
    with pytest.raises(ValueError, match="precision"):
        load_member("tiny", weights, registry=registry, backend="onnxruntime",
                    cache_dir=cache, precision="int4")  # fmt: skip
    with pytest.raises(ValueError, match="precision"):
        AnalysisConfig(members=("tiny",), precision="fp16")


def test_calibrated_int8_member_is_quantized_and_scores_close_to_fp32(installed) -> None:
    registry, weights, cache = installed
    fp32 = load_member("tiny", weights, registry=registry, backend="onnxruntime", cache_dir=cache)
    crops = _crops(24, 48)
    report = calibrate_int8(fp32, crops, batch_size=8)
    assert fp32.weights_sha256 is not None
    assert report.path == int8_graph_path(cache, "tiny", 48, fp32.weights_sha256)
    assert report.crops == 24 and report.path.exists()
    assert 0.0 <= report.mean_abs_change <= report.max_abs_change
    # really int8: weights stored as int8 initializers behind QDQ nodes
    graph = onnx.load(str(report.path)).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)

    int8 = load_member("tiny", weights, registry=registry, backend="onnxruntime",
                       cache_dir=cache, precision="int8")  # fmt: skip
    assert int8.tap_names == (TAP_GRADCAM,)  # explanations keep their taps
    held_out = _crops(12, 48, seed=1)
    l32, l8 = fp32.logits(held_out, 4), int8.logits(held_out, 4)
    assert l32.std() > 0.5, l32  # the crops score differently
    assert not np.array_equal(l8, l32)  # a different computation ...
    # ... with nearly the same scores
    assert np.abs(l8 - l32).max() < 0.1 * l32.std()
    assert np.corrcoef(l8, l32)[0, 1] > 0.98


def test_int8_needs_an_fp32_onnx_member_with_installed_weights(installed, tiny_member) -> None:
    with pytest.raises(ValueError, match="fp32 member on the onnxruntime backend"):
        calibrate_int8(tiny_member("tiny", 48), _crops(2, 48))  # torch backend, no weights
