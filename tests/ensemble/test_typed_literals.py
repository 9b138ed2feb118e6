"""Backend, precision and quantization are Literals, checked where a value
enters (configuration, a manifest, save_weights) with an error that names the
known values; configuration errors are TrusttraceErrors (and still ValueErrors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ensemble.config import BACKENDS, PRECISIONS, AnalysisConfig
from ensemble.errors import ConfigError, IncompatibleCheckpointError, TrusttraceError
from ensemble.runtime import resolve_backend, resolve_precision
from ensemble.weights import QUANTIZATIONS, Manifest, WeightFile, parse_quantization


def test_the_literals_list_their_values() -> None:
    assert BACKENDS == ("auto", "torch", "onnxruntime", "openvino")
    assert PRECISIONS == ("auto", "fp32", "bf16")
    assert QUANTIZATIONS == ("fp16", "fp32", "int8", "none")


@pytest.mark.parametrize(
    "kwargs, says",
    [
        ({"backend": "gpu"}, "backend must be"),
        ({"precision": "fp16"}, "precision must be"),
        ({"members": ()}, "select at least one"),
    ],
)
def test_a_bad_configuration_is_a_config_error(kwargs: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        AnalysisConfig(**kwargs)  # type: ignore[arg-type]
    # Commands catch TrusttraceError; older callers caught ValueError.
    assert isinstance(caught.value, TrusttraceError) and isinstance(caught.value, ValueError)


def test_the_runtime_refuses_unknown_values_as_config_errors() -> None:
    with pytest.raises(ConfigError, match="backend must be one of"):
        resolve_backend("tensorrt", "cpu")
    with pytest.raises(ConfigError, match="precision must be one of"):
        resolve_precision("int4", "torch", "cpu")
    with pytest.raises(ConfigError, match="needs the openvino or torch backend"):
        resolve_precision("bf16", "onnxruntime", "cpu")


def test_parse_quantization() -> None:
    assert [parse_quantization(q) for q in QUANTIZATIONS] == list(QUANTIZATIONS)
    with pytest.raises(ValueError, match="quantization must be one of"):
        parse_quantization("int4")


def test_a_manifest_with_an_unknown_quantization_is_refused_when_read(tmp_path: Path) -> None:
    manifest = Manifest(
        member="m",
        architecture="a",
        format="safetensors",
        files=(WeightFile("m-00001.safetensors", "0" * 64, 1),),
        input_size=32,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        quantization="int8",
    )
    data = json.loads(manifest.to_json())
    assert Manifest.from_json(json.dumps(data), tmp_path).quantization == "int8"
    data["quantization"] = "int4"
    with pytest.raises(IncompatibleCheckpointError, match="quantization must be one of"):
        Manifest.from_json(json.dumps(data), tmp_path / "manifest.json")
