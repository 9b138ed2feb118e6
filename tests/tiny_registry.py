"""The one registry of tiny random-init members for the tests (the site's
settings point ``TRUSTTRACE['REGISTRY']`` at :data:`REGISTRY`).

Every member keeps the real contract (``forward(x) -> [B, 1]`` fake-logit):

- ``tiny_a`` (64 px) and ``tiny_b`` (48 px): the site's two members;
- ``tiny_att`` (56 px): the AutoAttB4 contract in miniature (an attention map),
  with the other crop policy, for the explanation tests;
- ``toy_a`` (32 px), ``toy_b`` (24 px), ``toy_drop`` (BatchNorm and dropout) and
  ``bright`` (a score known by hand): trained and calibrated by the training
  tests on the 32 px crops of ``tests.training_toys``.

``tests.platform.hang_registry`` holds ``tiny_a`` and ``tiny_b`` with a forward
that waits, for the worker recovery tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ensemble.config import AnalysisConfig
from ensemble.crops import CropPolicy
from ensemble.registry import MemberSpec, Registry, tiny_spec
from ensemble.weights import save_weights

# The members a tiny site analyses with, and those the explanation tests use.
SITE_MEMBERS = ("tiny_a", "tiny_b")
EXPLAIN_MEMBERS = ("tiny_a", "tiny_att")


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


class Brightness(nn.Module):
    """logit = 4 * (mean input - 0.5): with mean 0 and std 1 normalisation
    the input is pixel / 255, so a grey crop's score is known by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(4.0))

    def forward(self, x: Tensor) -> Tensor:
        return (self.gain * (x.mean(dim=(1, 2, 3)) - 0.5)).reshape(-1, 1)


BRIGHTNESS = MemberSpec(
    name="bright",
    build=Brightness,
    crop=CropPolicy("square", margin=0.2),
    input_size=16,
    gradcam_layer="",
    description="brightness, tests only",
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
)


class DropNet(nn.Module):
    """A toy with BatchNorm and dropout: its training steps use the torch RNG
    and running statistics, as ResNet-50's do (resume tests need both)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.pool(self.features(x)).flatten(1))
        return out


DROPNET = MemberSpec(
    name="toy_drop",
    build=DropNet,
    crop=CropPolicy("square", margin=0.2),
    input_size=32,
    gradcam_layer="features.2",
    description="BatchNorm and dropout toy, tests only",
)

REGISTRY = Registry()
for _spec in (
    tiny_spec("tiny_a", 64),
    tiny_spec("tiny_b", 48),
    tiny_attention_spec("tiny_att", 56),
    tiny_spec("toy_a", 32),
    tiny_spec("toy_b", 24),
    DROPNET,
    BRIGHTNESS,
):
    REGISTRY.register(_spec)


def install_weights(
    folder: Path, names: Sequence[str] = SITE_MEMBERS, registry: Registry = REGISTRY
) -> Path:
    """Random-init weights of ``names`` in ``folder``, the same on every call
    (seeded), with manifests as the site reads them."""
    torch.manual_seed(0)
    for name in names:
        spec = registry.get(name)
        save_weights(spec.build().state_dict(), spec, folder, provenance={"data": "random, tests"})
    return folder


def explain_config(weights_dir: Path, cache_dir: Path, frames: int = 6) -> AnalysisConfig:
    """The explanation tests' configuration: a plain member and one with attention."""
    return AnalysisConfig(
        weights_dir=weights_dir, cache_dir=cache_dir, members=EXPLAIN_MEMBERS, frames=frames
    )
