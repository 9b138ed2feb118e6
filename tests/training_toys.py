"""Generated face-crop datasets and toy members for the training tests."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from ensemble.crops import CropPolicy
from ensemble.registry import MemberSpec, Registry, tiny_spec
from tests import media_factory as mf

# Six BlazeFace keypoints of the astronaut crop made by face_crop(size), as
# fractions of the side (right eye, left eye, nose, mouth, right ear, left ear).
FACE_KEYPOINTS = (
    (0.40, 0.42),
    (0.60, 0.40),
    (0.50, 0.52),
    (0.50, 0.63),
    (0.30, 0.47),
    (0.72, 0.45),
)


def face_crop(size: int) -> np.ndarray:
    return mf.face_image(size)


def face_keypoints(size: int) -> tuple[tuple[float, float], ...]:
    return tuple((x * size, y * size) for x, y in FACE_KEYPOINTS)


def toy_image(label: int, index: int, size: int) -> np.ndarray:
    """Reals: the face, slightly varied; fakes: the same with a bright square
    pasted on the face (a learnable, visible artefact)."""
    rng = np.random.default_rng(index)
    img = face_crop(size).astype(np.int16)
    img += rng.integers(-20, 21, size=3).astype(np.int16)
    if label:
        s = size // 3
        x, y = size // 3 + int(rng.integers(-2, 3)), size // 3 + int(rng.integers(-2, 3))
        img[y : y + s, x : x + s] = (250, 250, 40)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_dataset(
    root: Path,
    n_train: int = 24,
    n_val: int = 12,
    size: int = 32,
    keypoints: bool = True,
    originals: bool = False,
) -> Path:
    """A metadata.csv dataset with train/val splits, balanced, PNG crops.
    With ``originals``, each fake names the real crop just before it as the
    one it was made from (the dfdc_faces ``original`` column)."""
    rows = []
    index = 0
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            label = i % 2
            rel = Path("fake" if label else "real") / f"{split}_{i:03d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(
                str(root / rel), cv2.cvtColor(toy_image(label, index, size), cv2.COLOR_RGB2BGR)
            )
            kp = " ".join(f"{v:.1f}" for p in face_keypoints(size) for v in p) if keypoints else ""
            original = rows[-1]["file"] if label and originals else ""
            rows.append({"file": rel.as_posix(), "label": "FAKE" if label else "REAL",
                         "split": split, "keypoints": kp, "original": original})  # fmt: skip
            index += 1
    with (root / "metadata.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "label", "split", "keypoints", "original"])
        writer.writeheader()
        writer.writerows(rows)
    return root


class Brightness(nn.Module):
    """logit = 4 * (mean input - 0.5): with mean 0 and std 1 normalisation
    the input is pixel / 255, so a grey crop's score is known by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        )  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
                                  nn.Linear(8, 1))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.pool(self.features(x)).flatten(1))
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
REGISTRY.register(DROPNET)
REGISTRY.register(tiny_spec("toy_a", 32))
REGISTRY.register(tiny_spec("toy_b", 24))
REGISTRY.register(BRIGHTNESS)
