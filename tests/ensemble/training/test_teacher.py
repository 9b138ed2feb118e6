"""Knowledge distillation from the installed ensemble (``--teacher``)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ensemble.calibration import EnsembleCalibration, logit, write_calibration
from ensemble.errors import TrainingError
from ensemble.training.batches import FaceDataset
from ensemble.training.data import dataset_root, load_samples, select
from ensemble.training.loop import TrainConfig, train
from ensemble.training.teacher import (
    TeacherScore,
    check_coverage,
    check_share,
    teacher_probabilities,
)
from tests.tiny_registry import REGISTRY
from tests.training_toys import write_dataset

SPEC = REGISTRY.get("toy_a")
SHAS = {"a": "a" * 64, "b": "b" * 64}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("toy-data"))


def _rows(data: Path, split: str | None = "train") -> list[dict[str, str]]:
    with (data / "metadata.csv").open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if split is None or r["split"] == split]


def write_scores(
    path: Path,
    rows: list[dict[str, str]],
    member: str,
    probs: list[float],
    *,
    sha: str | None = None,
    mirrored: int = 0,
) -> Path:
    """A score table as ``evaluate --faces ... --scores`` writes it."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["file", "label", "group", "split"]
            + [f"{k}:{member}" for k in ("logit", "prob", "weights", "mirrored")]
        )
        for r, p in zip(rows, probs, strict=True):
            label = 1 if r["label"] == "FAKE" else 0
            row = [r["file"], label, r["file"], r["split"], float(logit(p)), p]
            w.writerow([*row, sha or SHAS[member], mirrored])
    return path


def _calibration(**kw) -> EnsembleCalibration:
    base = dict(
        members=SHAS,
        slope=1.5,
        bias=-0.2,
        member_weights={"a": 0.8, "b": 0.2},
        mirrored=("a",),
    )
    return EnsembleCalibration(**{**base, **kw})


def _teacher_files(data: Path, out: Path, p_a: list[float], p_b: list[float]) -> list[Path]:
    rows = _rows(data)
    out.mkdir(parents=True, exist_ok=True)
    return [
        write_scores(out / "a.csv", rows, "a", p_a, mirrored=1),
        write_scores(out / "b.csv", rows, "b", p_b),
    ]


def test_the_teacher_is_the_fitted_ensemble_of_the_members_scores(dataset: Path, tmp_path: Path):
    rows = _rows(dataset)
    rng = np.random.default_rng(0)
    p_a = rng.uniform(0.05, 0.95, len(rows)).tolist()
    p_b = rng.uniform(0.05, 0.95, len(rows)).tolist()
    files = _teacher_files(dataset, tmp_path, p_a, p_b)
    teacher = teacher_probabilities(files, _calibration(), dataset)
    assert set(teacher) == {dataset / r["file"] for r in rows}
    for r, a, b in zip(rows, p_a, p_b, strict=True):
        z = 1.5 * (0.8 * float(logit(a)) + 0.2 * float(logit(b))) - 0.2
        score = teacher[dataset / r["file"]]
        assert score.probability == pytest.approx(1 / (1 + np.exp(-z)))
        assert score.label == (r["label"] == "FAKE")
    # A metadata CSV given as --data names its crops relative to its folder.
    assert dataset_root(dataset / "metadata.csv") == dataset_root(dataset) == dataset
    # Fitted with the members' temperatures and biases the tables used: the same.
    same = _calibration(temperatures={"a": 1.0, "b": 1.0}, member_biases={"a": 0.0, "b": 0.0})
    assert teacher_probabilities(files, same, dataset) == teacher


def test_a_teacher_other_than_the_installed_ensemble_is_refused(dataset: Path, tmp_path: Path):
    rows = _rows(dataset)
    half = [0.5] * len(rows)
    a = write_scores(tmp_path / "a.csv", rows, "a", half, mirrored=1)
    b = write_scores(tmp_path / "b.csv", rows, "b", half)
    with pytest.raises(TrainingError, match="every member"):
        teacher_probabilities([a], _calibration(), dataset)
    old = write_scores(tmp_path / "old.csv", rows, "b", half, sha="c" * 64)
    with pytest.raises(TrainingError, match="other weights of b"):
        teacher_probabilities([a, old], _calibration(), dataset)
    flat = write_scores(tmp_path / "flat.csv", rows, "a", half)
    with pytest.raises(TrainingError, match="mirror"):
        teacher_probabilities([flat, b], _calibration(), dataset)
    with pytest.raises(TrainingError, match="other crops"):
        short = write_scores(tmp_path / "short.csv", rows[:-1], "b", half[:-1])
        teacher_probabilities([a, short], _calibration(), dataset)
    # A member re-exported with another temperature (or recalibrated with
    # another bias) since the fit keeps its hash; its probabilities differ.
    a = write_scores(tmp_path / "a.csv", rows, "a", [0.3] * len(rows), mirrored=1)
    b = write_scores(tmp_path / "b.csv", rows, "b", [0.8] * len(rows))
    for fitted in (
        {"temperatures": {"a": 1.0, "b": 2.0}},
        {"temperatures": {"a": 1.0, "b": 1.0}, "member_biases": {"a": 0.3}},
    ):
        with pytest.raises(TrainingError, match="another temperature or bias"):
            teacher_probabilities([a, b], _calibration(**fitted), dataset)


def test_every_training_crop_needs_a_teacher_score_and_the_share_a_sane_value(dataset: Path):
    samples = select(load_samples(dataset), "train")
    teacher = {s.path: TeacherScore(0.5, s.label) for s in samples[1:]}
    with pytest.raises(TrainingError, match=r"lack 1 of the 24"):
        check_coverage(teacher, samples)
    check_coverage({**teacher, samples[0].path: TeacherScore(0.1, samples[0].label)}, samples)
    with pytest.raises(TrainingError, match="label 1 training crops otherwise"):
        check_coverage(
            {**teacher, samples[0].path: TeacherScore(0.1, 1 - samples[0].label)}, samples
        )
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(TrainingError, match="--distill"):
            check_share(bad)
    assert check_share(1.0) == 1.0


def test_targets_mix_the_label_with_the_teacher_except_for_self_blended_reals(dataset: Path):
    samples = select(load_samples(dataset), "train")
    teacher = {s.path: (0.3 if s.label == 0 else 0.8) for s in samples}
    ds = FaceDataset(
        samples, 32, SPEC.mean, SPEC.std, train=True, teacher=teacher, distill=0.25, sbi_prob=0.0
    )
    real = next(i for i, s in enumerate(samples) if s.label == 0)
    fake = next(i for i, s in enumerate(samples) if s.label == 1)
    assert ds.target(real, 0) == pytest.approx(0.75 * 0 + 0.25 * 0.3)
    assert ds.target(fake, 1) == pytest.approx(0.75 * 1 + 0.25 * 0.8)
    # A real that became a self-blended fake is a new image: its label stands.
    assert ds.target(real, 1) == 1.0
    _, labels, targets = ds.batch([real, fake], [0, 1], [0, 1])
    assert labels.tolist() == [0.0, 1.0]
    assert targets.tolist() == pytest.approx([0.075, 0.95])
    plain = FaceDataset(samples, 32, SPEC.mean, SPEC.std, train=True)
    _, labels, targets = plain.batch([real, fake], [0, 1], [0, 1])
    assert targets.tolist() == labels.tolist() == [0.0, 1.0]


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        member=SPEC.name,
        data=data,
        out=out,
        epochs=6,
        batch_size=8,
        lr=1e-2,
        seed=3,
        augment=False,
        command="pytest",
    )
    return TrainConfig(**{**base, **kw})


def test_a_run_learns_what_the_teacher_says_not_only_the_labels(dataset: Path, tmp_path: Path):
    """A teacher that calls every real fake and every fake real, at full
    share, must turn the toy model around: the targets reach the loss."""
    rows = _rows(dataset)
    inverted = [0.02 if r["label"] == "FAKE" else 0.98 for r in rows]
    weights = tmp_path / "weights"
    write_calibration(
        weights, _calibration(slope=1.0, bias=0.0, member_weights={"a": 0.5, "b": 0.5})
    )
    files = _teacher_files(dataset, tmp_path / "scores", inverted, inverted)
    config = _config(
        dataset,
        tmp_path / "taught",
        teacher_scores=tuple(files),
        teacher_weights=weights,
        patience=99,
    )
    taught = train(replace(config, distill=1.0), SPEC, progress=False)
    # Validation measures against the true labels: the taught model ranks
    # them the wrong way round (the same run on the labels alone learns the
    # artefact: test_loop_and_export).
    assert len(taught.history) == 6
    assert taught.history[-1].val_auc <= 0.2 and taught.history[-1].val_acc <= 0.3
    run = json.loads((tmp_path / "taught" / "run.json").read_text())
    assert run["teacher"]["share"] == 1.0 and len(run["teacher"]["digest"]) == 64
    assert run["config"]["teacher_scores"] == [str(f) for f in files]
    # Resuming it without the teacher, with another share or with other
    # scores is refused.
    rescored = _teacher_files(dataset, tmp_path / "rescored", [0.5] * len(rows), inverted)
    for other in (
        {},
        {"teacher_scores": tuple(files), "teacher_weights": weights, "distill": 0.5},
        {"teacher_scores": tuple(rescored), "teacher_weights": weights, "distill": 1.0},
    ):
        with pytest.raises(TrainingError, match=r"other settings.*teacher"):
            train(
                replace(_config(dataset, tmp_path / "taught", resume=True), **other),
                SPEC,
                progress=False,
            )


def test_a_teacher_cannot_join_a_run_begun_without_one(dataset: Path, tmp_path: Path):
    rows = _rows(dataset)
    weights = tmp_path / "weights"
    write_calibration(weights, _calibration())
    files = _teacher_files(dataset, tmp_path / "scores", [0.5] * len(rows), [0.5] * len(rows))
    train(_config(dataset, tmp_path / "run", epochs=1), SPEC, progress=False)
    with pytest.raises(TrainingError, match=r"other settings.*teacher"):
        train(
            _config(
                dataset,
                tmp_path / "run",
                epochs=2,
                resume=True,
                teacher_scores=tuple(files),
                teacher_weights=weights,
                distill=0.5,
            ),
            SPEC,
            progress=False,
        )


def test_distill_without_teacher_scores_or_a_calibration_is_refused(dataset: Path, tmp_path: Path):
    with pytest.raises(TrainingError, match="--teacher"):
        train(_config(dataset, tmp_path / "r1", distill=0.5), SPEC, progress=False)
    rows = _rows(dataset)
    files = _teacher_files(dataset, tmp_path / "scores", [0.5] * len(rows), [0.5] * len(rows))
    with pytest.raises(TrainingError, match="no ensemble calibration"):
        train(
            _config(
                dataset,
                tmp_path / "r2",
                teacher_scores=tuple(files),
                teacher_weights=tmp_path / "nothing",
                distill=0.5,
            ),
            SPEC,
            progress=False,
        )
