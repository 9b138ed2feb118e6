from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from ensemble.training.data import data_digest, load_samples, select, split_leaks
from ensemble.training.export import COMMITTED_WEIGHTS_LIMIT

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".onnx", ".ckpt")
REPO = Path(__file__).resolve().parents[3]


def _png(path: Path, grey: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8, 3), grey, np.uint8))


def test_seed_layout_with_capitalised_split_and_class_folders(tmp_path: Path) -> None:
    for split in ("Train", "Validation", "Test"):
        for cls in ("Real", "Fake"):
            for i in range(2):
                _png(tmp_path / split / cls / f"{i}.jpg")
    samples = load_samples(tmp_path)
    assert len(samples) == 12
    for split in ("train", "val", "test"):
        chosen = select(samples, split)
        assert sorted(s.label for s in chosen) == [0, 0, 1, 1], split
        assert all(s.path.parts[-3].lower().startswith(split[:3]) for s in chosen)


def test_train_folder_without_validation_gives_a_hashed_validation_share(tmp_path: Path) -> None:
    for cls in ("real", "fake"):
        for i in range(50):
            _png(tmp_path / "train" / cls / f"{i:02d}.png")
        _png(tmp_path / "test" / cls / "t.png")
    samples = load_samples(tmp_path)
    val, train = select(samples, "val"), select(samples, "train")
    assert len(val) + len(train) == 100 and 5 <= len(val) <= 40
    assert {s.path.parent.parent.name for s in val} == {"train"}
    assert len(select(samples, "test")) == 2
    assert load_samples(tmp_path) == samples  # the split does not depend on chance


def test_hashed_split_keeps_a_fake_with_its_original(tmp_path: Path) -> None:
    rows = ["file,label,original"]
    for i in range(40):
        _png(tmp_path / "real" / f"r{i}.png")
        _png(tmp_path / "fake" / f"f{i}.png")
        rows += [f"real/r{i}.png,REAL,", f"fake/f{i}.png,FAKE,real/r{i}.png"]
    (tmp_path / "metadata.csv").write_text("\n".join(rows) + "\n")
    samples = load_samples(tmp_path)
    assert select(samples, "val") and select(samples, "train")
    assert split_leaks(samples) == []
    by_path = {s.path: s for s in samples}
    for s in samples:
        if s.label == 1:
            assert s.original is not None and by_path[s.original].split == s.split


def test_data_digest_changes_with_a_file_s_content(tmp_path: Path) -> None:
    _png(tmp_path / "real" / "a.png", 10)
    _png(tmp_path / "fake" / "b.png", 20)
    before = data_digest(load_samples(tmp_path))
    assert data_digest(load_samples(tmp_path)) == before
    _png(tmp_path / "fake" / "b.png", 30)
    assert data_digest(load_samples(tmp_path)) != before


def test_committed_weights_stay_under_150_mb() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no list of committed files")
    listed = (
        subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    total = sum(
        (REPO / name).stat().st_size
        for name in listed
        if name.endswith(WEIGHT_SUFFIXES) or name.startswith("weights/")
    )
    assert total < COMMITTED_WEIGHTS_LIMIT, f"{total / 1e6:.1f} MB of weights are committed"
