"""Tiny members for explanation tests: one plain, one with an attention map."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ensemble.config import AnalysisConfig
from ensemble.crops import CropPolicy
from ensemble.registry import MemberSpec, Registry, tiny_spec
from ensemble.weights import save_weights


class TinyAttentionDetector(nn.Module):
    """The AutoAttB4 contract in miniature: features, a sigmoid attention map
    multiplied into them, a linear head; ``forward_with_attention``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.attconv = nn.Conv2d(8, 1, kernel_size=1)
        self.head = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 1)

    def forward_with_attention(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.stem(x)
        attention = torch.sigmoid(self.attconv(f))
        g = self.head(f * attention)
        return self.fc(g.mean(dim=(2, 3))), attention

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_attention(x)[0]


def tiny_attention_spec(name: str = "tiny_att", input_size: int = 56) -> MemberSpec:
    return MemberSpec(
        name=name,
        build=TinyAttentionDetector,
        # The other crop policy than tiny_spec's, so both are drawn back onto frames.
        crop=CropPolicy("isotropic", margin=1 / 3),
        input_size=input_size,
        gradcam_layer="head.0",
        description="tiny test detector with attention",
        has_attention=True,
    )


REGISTRY = Registry()
REGISTRY.register(tiny_spec("tiny_a", 64))
REGISTRY.register(tiny_attention_spec("tiny_att", 56))


def install_weights(weights_dir: Path) -> Path:
    torch.manual_seed(0)
    for spec in REGISTRY:
        save_weights(spec.build().state_dict(), spec, weights_dir, provenance={"data": "random"})
    return weights_dir


def tiny_config(weights_dir: Path, cache_dir: Path, frames: int = 6) -> AnalysisConfig:
    return AnalysisConfig(
        weights_dir=weights_dir,
        cache_dir=cache_dir,
        members=("tiny_a", "tiny_att"),
        frames=frames,
    )
