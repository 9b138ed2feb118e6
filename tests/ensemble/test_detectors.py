from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ensemble.detectors import EfficientNetAutoAttB4Detector, ResNet50Detector
from ensemble.errors import RegistryError
from ensemble.registry import REGISTRY, Registry, tiny_spec


def reference_keys(shared: Path, name: str) -> list[tuple[str, tuple[int, ...]]]:
    data = json.loads((shared / "reference" / name).read_text())
    return [(k, tuple(shape)) for k, shape in data["keys"]]


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.parametrize(
    "member,reference",
    [
        ("effnet_b7", "selimsef_effnet_b7.json"),
        ("effnet_autoatt_b4", "polimi_effnet_autoatt_b4.json"),
    ],
)
def test_state_dict_layout_is_exactly_the_published_one(
    shared: Path, member: str, reference: str
) -> None:
    model = REGISTRY.get(member).build()
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert sorted(ours) == sorted(reference_keys(shared, reference))


@pytest.mark.slow
@pytest.mark.parametrize("member", ["resnet50", "effnet_b7", "effnet_autoatt_b4"])
def test_every_member_maps_a_batch_to_one_logit_each(member: str) -> None:
    spec = REGISTRY.get(member)
    model = spec.build().eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 1)
    assert torch.isfinite(out).all()
    # The Grad-CAM layer the registry names exists.
    assert isinstance(model.get_submodule(spec.gradcam_layer), nn.Module)


@pytest.mark.slow
def test_autoatt_exposes_its_attention_map_in_unit_range() -> None:
    model = EfficientNetAutoAttB4Detector().eval()
    with torch.inference_mode():
        logit, attention = model.forward_with_attention(torch.randn(2, 3, 224, 224))
        plain = model(torch.randn(1, 3, 224, 224))
    assert logit.shape == (2, 1) and plain.shape == (1, 1)
    assert attention.shape == (2, 1, 28, 28)  # stride 8: the 56-channel stage
    assert attention.min() >= 0 and attention.max() <= 1


@pytest.mark.slow
def test_autoatt_attention_alone_equals_the_full_forwards_attention() -> None:
    torch.manual_seed(0)
    model = EfficientNetAutoAttB4Detector().eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        _, attention = model.forward_with_attention(x)
        alone = model.attention_map(x)
    assert torch.equal(alone, attention)


@pytest.mark.slow
def test_resnet_head_is_the_seed_papers_second_variation() -> None:
    head = ResNet50Detector().head
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (2048, 256),
        (256, 128),
        (128, 64),
        (64, 1),
    ]
    assert [m.p for m in head if isinstance(m, nn.Dropout)] == [0.7, 0.7]
    assert [m.num_features for m in head if isinstance(m, nn.BatchNorm1d)] == [256, 128]


def test_registry_refuses_duplicates_and_lists_known_names() -> None:
    registry = Registry()
    registry.register(tiny_spec("a"))
    with pytest.raises(RegistryError, match="already registered"):
        registry.register(tiny_spec("a"))
    with pytest.raises(RegistryError, match="known detectors: a"):
        registry.get("b")


def test_default_registry_declares_the_three_members() -> None:
    assert REGISTRY.names() == ["resnet50", "effnet_b7", "effnet_autoatt_b4"]
    assert REGISTRY.get("effnet_b7").crop.kind == "isotropic"
    assert REGISTRY.get("effnet_autoatt_b4").crop.kind == "square"
