"""The detector registry: each member is declared once, here.

A declaration names the architecture builder, the face crop it expects, its
default input size and normalisation (a weights manifest may override those),
the layer Grad-CAM looks at, and the key layout of the published checkpoints it
can import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import nn

from ensemble.crops import CropPolicy
from ensemble.detectors import (
    EfficientNetAutoAttB4Detector,
    EfficientNetB7Detector,
    ResNet50Detector,
    TinyDetector,
)
from ensemble.errors import RegistryError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class MemberSpec:
    name: str
    build: Callable[[], nn.Module]
    crop: CropPolicy
    input_size: int
    gradcam_layer: str
    description: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # The published checkpoint layout `import_weights` accepts, if any.
    checkpoint_format: str | None = None
    # The input size published checkpoints of that layout were trained at,
    # when it differs from ``input_size`` (the size of the project's own weights).
    checkpoint_input_size: int | None = None
    has_attention: bool = False


class Registry:
    """Name -> :class:`MemberSpec`, refusing duplicates and unknown names."""

    def __init__(self) -> None:
        self._specs: dict[str, MemberSpec] = {}

    def register(self, spec: MemberSpec) -> MemberSpec:
        if spec.name in self._specs:
            raise RegistryError(f"detector {spec.name!r} is already registered")
        self._specs[spec.name] = spec
        return spec

    def get(self, name: str) -> MemberSpec:
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(sorted(self._specs)) or "none"
            raise RegistryError(f"unknown detector {name!r}; known detectors: {known}") from None

    def names(self) -> list[str]:
        return list(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[MemberSpec]:
        return iter(self._specs.values())


REGISTRY = Registry()

REGISTRY.register(
    MemberSpec(
        name="resnet50",
        build=ResNet50Detector,
        # 30% of the face width on each side keeps the hairline, jaw and ears,
        # where blending seams show.
        crop=CropPolicy("square", margin=0.3),
        # The project trains ResNet-50 at 128 px on the CPU (recipes.py says
        # why); its manifest records the size analysis crops at.
        input_size=128,
        gradcam_layer="backbone.layer4",
        description="ResNet-50 with the dense head of 'A ResNet-based system for real-time "
        "detection of deepfake videos'",
    )
)
REGISTRY.register(
    MemberSpec(
        name="effnet_b7",
        build=EfficientNetB7Detector,
        crop=CropPolicy("isotropic", margin=1 / 3),
        # The project trains B7 on 224 px face crops (the DFDC crops it has are
        # 224 px, so a larger input would only upsample them), and 224 keeps
        # the ensemble inside its CPU time budget (README, "Measured speed").
        # selimsef's published checkpoints were trained at 380; importing one
        # records that size in its manifest.
        input_size=224,
        gradcam_layer="encoder.bn2",
        description="EfficientNet-B7 trained with SSIM-mask guided augmentation "
        "(after the DFDC winning solution)",
        checkpoint_format="selimsef",
        checkpoint_input_size=380,
    )
)
REGISTRY.register(
    MemberSpec(
        name="effnet_autoatt_b4",
        build=EfficientNetAutoAttB4Detector,
        crop=CropPolicy("square", margin=0.2),
        input_size=224,
        # After the head's swish (before it, channels the swish switches off
        # would still weigh in the map).
        gradcam_layer="head_act",
        description="EfficientNet-B4 with a learned attention map (after polimi-ispl/icpr2020dfdc)",
        checkpoint_format="polimi",
        has_attention=True,
    )
)


def tiny_spec(name: str = "tiny", input_size: int = 64) -> MemberSpec:
    """A small random-init member with the real contract, for tests only."""
    return MemberSpec(
        name=name,
        build=TinyDetector,
        crop=CropPolicy("square", margin=0.2),
        input_size=input_size,
        gradcam_layer="features.2",
        description="tiny test detector",
    )
