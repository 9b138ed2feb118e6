"""Explanations of members that keep only their head in torch (loaded from
weights, scored by a compiled graph): the same Grad-CAM and attention maps
as with every weight, and plain Grad-CAM reloads the weights it needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ensemble.members import LoadedMember, load_member
from explain import gradcam
from explain.attention import attention_maps
from explain.gradcam import gradcam_maps
from tests.tiny_registry import REGISTRY, install_weights


def _crops(n: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _pair(tmp_path: Path, name: str, backend: str) -> tuple[LoadedMember, LoadedMember]:
    weights = install_weights(tmp_path / "w", (name,))
    plain = load_member(name, weights, registry=REGISTRY)
    member = load_member(
        name,
        weights,
        registry=REGISTRY,
        backend=backend,
        cache_dir=tmp_path / "cache",
        precision="fp32",
    )
    assert member.head_only
    return plain, member


@pytest.mark.parametrize(
    "backend", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.openvino)]
)
@pytest.mark.parametrize("name", ["tiny_a", "tiny_att"])
def test_head_only_member_gives_the_same_gradcam_and_attention(
    tmp_path: Path, name: str, backend: str
) -> None:
    plain, member = _pair(tmp_path, name, backend)
    crops = _crops(5, member.input_size)
    scored = member.infer(crops, 3, taps=True)
    maps = gradcam_maps(
        member, crops, 2, logits=scored.logits, activations=scored.taps["gradcam_layer"]
    )
    reference = gradcam_maps(plain, crops, 2)
    assert member.head_only  # the replay matched: nothing was reloaded
    for a, b in zip(maps, reference, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-3)
    if plain.spec.has_attention:
        for a, b in zip(
            attention_maps(member, crops, 2), attention_maps(plain, crops, 2), strict=True
        ):
            np.testing.assert_allclose(a, b, atol=1e-4)


def test_plain_gradcam_fallback_reloads_the_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain, member = _pair(tmp_path, "tiny_a", "onnxruntime")
    monkeypatch.setattr(gradcam, "logits_match", lambda *a, **k: False)
    crops = _crops(3, member.input_size)
    maps = gradcam_maps(member, crops, 2)
    # The whole network was reloaded for the fallback and freed after it,
    # not kept in the worker for good.
    assert member.head_only
    held = sum(p.untyped_storage().nbytes() for p in member.model.parameters())
    assert held < 0.5 * sum(p.untyped_storage().nbytes() for p in plain.model.parameters())
    reference = gradcam_maps(plain, crops, 2)
    for a, b in zip(maps, reference, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # A second fallback reloads again and gives the same maps.
    for a, b in zip(gradcam_maps(member, crops, 2), reference, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert member.head_only


def test_a_fallback_inside_inference_mode_leaves_a_member_grad_cam_can_use(
    tmp_path: Path,
) -> None:
    """The attention fallback runs under inference mode: the head-only
    placeholders made there must not be inference tensors, or the next
    Grad-CAM fails."""
    import torch

    plain, member = _pair(tmp_path, "tiny_a", "onnxruntime")
    with torch.inference_mode(), member.whole_model():
        pass
    assert member.head_only
    assert not any(p.is_inference() for p in member.model.parameters())
    crops = _crops(2, member.input_size)
    maps = gradcam_maps(member, crops, 2)
    for a, b in zip(maps, gradcam_maps(plain, crops, 2), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
