from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from ensemble.training.data import (
    Sample,
    data_digest,
    limit_balanced,
    load_samples,
    select,
    split_leaks,
)
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


def test_a_fake_frame_is_paired_with_the_real_crop_of_the_same_frame_and_face(
    tmp_path: Path,
) -> None:
    """extract_faces writes several crops per video: each fake crop's original
    is the real crop of its own frame and face, not one crop for the video."""
    rows = ["file,label,video,original,frame,person,keypoints"]
    left = " ".join(["10 10"] * 6)
    right = " ".join(["50 10"] * 6)
    for frame in (0, 10, 20):
        for person, kp in ((0, left), (1, right)):
            name = f"v_p{person}_f{frame:05d}.png"
            _png(tmp_path / "real" / name)
            _png(tmp_path / "fake" / name)
            rows.append(f"real/{name},REAL,v.mp4,,{frame},{person},{kp}")
            # The fake video's tracker numbered the two faces the other way.
            rows.append(f"fake/{name},FAKE,f.mp4,v.mp4,{frame},{1 - person},{kp}")
    rows.append(f"fake/late.png,FAKE,f.mp4,v.mp4,12,0,{right}")
    _png(tmp_path / "fake" / "late.png")
    (tmp_path / "metadata.csv").write_text("\n".join(rows) + "\n")
    samples = load_samples(tmp_path)
    originals = {s.path.name: s.original for s in samples if s.label == 1}
    for frame in (0, 10, 20):
        for person in (0, 1):
            name = f"v_p{person}_f{frame:05d}.png"
            assert originals[name] == tmp_path / "real" / name  # same frame, same face
    assert originals["late.png"] == tmp_path / "real" / "v_p1_f00010.png"  # nearest frame
    assert len({s.group for s in samples}) == 1  # one source video, one group


def test_a_fake_naming_its_source_differently_still_shares_its_split(tmp_path: Path) -> None:
    """The original named by the video's path, or by the real crop's own file,
    resolves to the real crop's group: the hashed split keeps them together."""
    rows = ["file,label,video,original"]
    for i in range(40):
        _png(tmp_path / "real" / f"r{i}.png")
        _png(tmp_path / "fake" / f"a{i}.png")
        _png(tmp_path / "fake" / f"b{i}.png")
        rows += [
            f"real/r{i}.png,REAL,v{i}.mp4,",
            f"fake/a{i}.png,FAKE,a{i}.mp4,originals/v{i}.mp4",
            f"fake/b{i}.png,FAKE,b{i}.mp4,real/r{i}.png",
        ]
    (tmp_path / "metadata.csv").write_text("\n".join(rows) + "\n")
    samples = load_samples(tmp_path)
    assert select(samples, "val") and select(samples, "train")
    assert split_leaks(samples) == []
    by_path = {s.path: s for s in samples}
    for s in samples:
        if s.label == 1:
            assert s.original is not None
            real = by_path[s.original]
            assert (real.group, real.split) == (s.group, s.split)


def _pairs(n: int) -> list[Sample]:
    reals = [Sample(Path(f"real/{i}.png"), 0, "train") for i in range(n)]
    fakes = [
        Sample(Path(f"fake/{i}.png"), 1, "train", original=r.path) for i, r in enumerate(reals)
    ]
    return reals + fakes


def test_a_limit_that_keeps_pairs_keeps_each_kept_fake_s_original() -> None:
    samples = _pairs(40)
    kept = limit_balanced(samples, 16, seed=3, keep_pairs=True)
    reals = {s.path for s in kept if s.label == 0}
    fakes = [s for s in kept if s.label == 1]
    assert len(reals) == len(fakes) == 8
    assert {s.original for s in fakes} == reals
    assert limit_balanced(samples, 16, seed=3, keep_pairs=True) == kept  # reproducible
    # Drawn independently, most fakes lose their original.
    loose = limit_balanced(samples, 16, seed=3)
    assert len({s.original for s in loose if s.label == 1} - {s.path for s in loose}) >= 4


def test_a_limit_that_keeps_pairs_tops_up_with_other_reals() -> None:
    # More reals than fakes: the originals first, then other reals.
    samples = _pairs(10) + [Sample(Path(f"real/x{i}.png"), 0, "train") for i in range(30)]
    kept = limit_balanced(samples, 30, seed=0, keep_pairs=True)
    reals = {s.path for s in kept if s.label == 0}
    assert len(kept) == 30 and len(reals) == 20
    assert {s.original for s in kept if s.label == 1} <= reals
