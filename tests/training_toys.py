"""Generated face-crop datasets for the training tests (their toy members are
in ``tests.tiny_registry``)."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

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
            rows.append(
                {
                    "file": rel.as_posix(),
                    "label": "FAKE" if label else "REAL",
                    "split": split,
                    "keypoints": kp,
                    "original": original,
                }
            )
            index += 1
    with (root / "metadata.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "label", "split", "keypoints", "original"])
        writer.writeheader()
        writer.writerows(rows)
    return root
