"""Soft targets from a teacher: training a member towards what the installed
ensemble says of each training crop (knowledge distillation).

The teacher is the fitted ensemble (``weights/ensemble.json``) applied to
per-crop member scores of the *training* crops, written by
``evaluate --faces DATA --split train --scores FILE``. A crop's target is
then ``(1 - share) * label + share * teacher`` instead of its 0/1 label. Binary
cross-entropy is linear in the target, so this is the label's loss and the
teacher's loss mixed in that proportion.

Why: the labels of face crops from fake videos are noisy (a crop from a fake
video whose face was barely touched is labelled fake all the same), and an
ensemble ranks crops better than any one member. A target that says "fake,
but the members are unsure" carries that, where a hard 1 does not.

The teacher's members were trained on these crops, so its scores of them are
surer than its scores of unseen ones; the label keeps the rest of the
target. A crop the dataset transforms into another class during training
(a self-blended real becomes a fake) keeps its hard label: the teacher never
saw that image. A fake with part of its manipulated region blacked out (the
SSIM blackout) keeps the teacher's target: it is still that fake, with less of
the evidence showing, which is what a softer target says too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ensemble.calibration import EnsembleCalibration, EnsembleCalibrationError, read_calibration
from ensemble.errors import TrainingError
from ensemble.scoring import calibrate
from ensemble.training.data import DatasetError, Sample
from ensemble.training.ensemble_fit import ScoreTable, read_scores

# Calibrated probabilities in a score table and the ones its logits give
# with the fitted temperature and bias agree within this (the CSV's rounding).
PROB_ATOL = 1e-6


@dataclass(frozen=True)
class TeacherScore:
    """The teacher's probability of one crop, and the label its table gave it."""

    probability: float
    label: int


def teacher_probabilities(
    scores: Sequence[Path], calibration: EnsembleCalibration, root: Path
) -> dict[Path, TeacherScore]:
    """Each scored crop's ensemble probability (path under ``root`` -> score).

    The score tables must hold every member ``calibration`` combines, scored
    by the weights it was fitted for, calibrated with the temperature and
    bias it was fitted with, and mirrored as it was fitted: anything else
    would be another teacher than the one named.
    """
    try:
        table = read_scores(list(scores), any_split=True)
    except DatasetError as e:
        raise TrainingError(f"teacher scores: {e}") from e
    members = set(calibration.members)
    if set(table.probs) != members:
        raise TrainingError(
            f"the teacher scores hold {', '.join(sorted(table.probs))}; the ensemble "
            f"combines {', '.join(sorted(members))}: score the crops with every member"
        )
    stale = sorted(m for m in members if table.weights[m] != calibration.members[m])
    if stale:
        raise TrainingError(
            f"the teacher scores were made with other weights of {', '.join(stale)} than "
            "the ensemble was fitted for: score the crops again with the installed members"
        )
    fitted_mirrored = set(calibration.mirrored or ())
    if set(table.mirrored) != fitted_mirrored:
        raise TrainingError(
            "the teacher scores mirror other members "
            f"({', '.join(sorted(table.mirrored)) or 'none'}) than the ensemble was fitted "
            f"with ({', '.join(sorted(fitted_mirrored)) or 'none'}): score them with the "
            "installed settings"
        )
    _check_member_calibration(table, calibration)
    probs = calibration.apply(table.probs)
    if not np.isfinite(probs).all():
        raise TrainingError("the teacher scores hold values that are not finite numbers")
    return {
        root / f: TeacherScore(float(p), int(y))
        for f, p, y in zip(table.files, probs, table.labels, strict=True)
    }


def _check_member_calibration(table: ScoreTable, calibration: EnsembleCalibration) -> None:
    """Refuse tables whose members were calibrated otherwise than the fit
    assumed (a member re-exported or recalibrated since keeps its weights'
    hash): their probabilities are then not the ones the fit combined."""
    fitted_t = calibration.temperatures or {}
    fitted_b = calibration.member_biases or {}
    for m in sorted(calibration.members):
        if m not in fitted_t:
            continue  # a file from before temperatures were recorded
        if m not in table.logits:
            raise TrainingError(
                f"the teacher scores of {m} have no logit column to check its calibration "
                "against the ensemble's: score the crops again with evaluate --scores"
            )
        try:
            expected = calibrate(table.logits[m], fitted_t[m], fitted_b.get(m, 0.0))
        except ValueError as e:
            raise TrainingError(f"the ensemble's calibration of {m}: {e}") from e
        if not np.allclose(table.probs[m], expected, rtol=0.0, atol=PROB_ATOL):
            raise TrainingError(
                f"the teacher scores of {m} were calibrated with another temperature or bias "
                "than the ensemble was fitted with (re-exported or recalibrated since?): "
                "refit the ensemble (calibrate_ensemble) or score with the members it was "
                "fitted for"
            )


def load_teacher(scores: Sequence[Path], weights_dir: Path, root: Path) -> dict[Path, TeacherScore]:
    """:func:`teacher_probabilities` with the calibration installed under
    ``weights_dir``."""
    try:
        calibration = read_calibration(weights_dir)
    except EnsembleCalibrationError as e:
        raise TrainingError(f"the teacher: {e}") from e
    if calibration is None:
        raise TrainingError(
            f"{weights_dir} has no ensemble calibration (ensemble.json) to combine the "
            "teacher's members with"
        )
    return teacher_probabilities(scores, calibration, root)


def check_coverage(teacher: Mapping[Path, TeacherScore], samples: Sequence[Sample]) -> None:
    """Refuse a teacher that has not scored every training crop, or that
    labels one otherwise than the dataset (a table of another version of it)."""
    missing = [s.path for s in samples if s.path not in teacher]
    if missing:
        raise TrainingError(
            f"the teacher scores lack {len(missing)} of the {len(samples)} training crops "
            f"(e.g. {missing[0]}): score the same dataset's train split "
            "(evaluate --faces DATA --split train --scores FILE)"
        )
    relabelled = [s.path for s in samples if teacher[s.path].label != s.label]
    if relabelled:
        raise TrainingError(
            f"the teacher scores label {len(relabelled)} training crops otherwise than the "
            f"dataset does (e.g. {relabelled[0]}): score this version of the dataset"
        )


def check_share(share: float) -> float:
    """The teacher's share in a target, which must lie in (0, 1]."""
    if not (math.isfinite(share) and 0.0 < share <= 1.0):
        raise TrainingError(f"--distill must be above 0 and at most 1, not {share}")
    return share
