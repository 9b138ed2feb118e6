"""Fitting the ensemble's calibration (:mod:`ensemble.calibration`) on
per-crop member scores, and measuring it honestly.

The input is one or more CSVs written by ``evaluate --faces ... --scores``:
``file,label,group,split`` (``split`` since December 2026) and, per member,
``logit:<m>``, ``prob:<m>`` (calibrated) and ``weights:<m>`` (the weights'
sha256). Tables for different members on
the same crops are joined on ``file``.

The fit and the figures quoted for it use the same validation crops, so the
figures are also given cross-validated: the crops are split into
``CV_FOLDS`` folds by a hash of their group (a source video and the fakes
made from it stay together), the calibration is fitted on the other folds
and applied to each fold in turn.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import numpy.typing as npt

from ensemble.calibration import MEAN_METHOD, WEIGHTED_METHOD, EnsembleCalibration, logit
from ensemble.evaluation import binary_metrics
from ensemble.scoring import calibrate
from ensemble.training.calibrate import fit_member_calibration, fit_platt, fit_weighted_platt
from ensemble.training.data import DatasetError, dataset_root

CV_FOLDS = 5


@dataclass(frozen=True)
class ScoreTable:
    """Per-crop calibrated probabilities of several members on the same crops."""

    files: tuple[str, ...]
    labels: npt.NDArray[np.float64]
    groups: tuple[str, ...]
    probs: Mapping[str, npt.NDArray[np.float64]]
    weights: Mapping[str, str]
    # Raw logits, for the members whose table has a ``logit:<m>`` column.
    logits: Mapping[str, npt.NDArray[np.float64]] = field(default_factory=dict)
    # The members whose scores are the mean of each crop as is and mirrored
    # (``mirrored:<m>`` is 1; tables without the column scored as is).
    mirrored: frozenset[str] = frozenset()


def _read_one(path: Path, any_split: bool = False) -> tuple[list[dict[str, str]], list[str]]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            fields = list(reader.fieldnames or [])
    except OSError as e:
        raise DatasetError(f"cannot read scores {path}: {e}") from e
    missing = {"file", "label", "group"} - set(fields)
    if missing:
        raise DatasetError(f"{path} is not a scores CSV (no {', '.join(sorted(missing))} column)")
    members = [f.split(":", 1)[1] for f in fields if f.startswith("prob:")]
    if not members or not rows:
        raise DatasetError(f"{path} holds no member scores")
    for m in members:
        if f"weights:{m}" not in fields:
            raise DatasetError(f"{path} does not say which weights of {m} it scored")
    # Tables from before the split column cannot be checked; newer ones must
    # hold validation crops only (training crops flatter every member), unless
    # the caller vouches that no member trained on any of them (any_split).
    if "split" in fields and not any_split:
        others = sorted({r["split"] or "(none)" for r in rows} - {"val"})
        if others:
            raise DatasetError(
                f"{path} scores crops of the {', '.join(others)} split: fit the ensemble on "
                "validation crops (evaluate --split val --scores ...), or pass --any-split "
                "for a held-out set no member was trained on"
            )
    return rows, members


def read_scores(paths: Sequence[Path], *, any_split: bool = False) -> ScoreTable:
    """Join the score CSVs on ``file``; every table must cover the same crops
    with the same labels, and a member may appear in one table only. Crops
    outside the validation split are refused unless ``any_split``."""
    files: tuple[str, ...] | None = None
    labels: dict[str, int] = {}
    groups: dict[str, str] = {}
    probs: dict[str, npt.NDArray[np.float64]] = {}
    weights: dict[str, str] = {}
    logits: dict[str, npt.NDArray[np.float64]] = {}
    mirrored: set[str] = set()
    for path in paths:
        rows, members = _read_one(path, any_split)
        these = tuple(sorted(r["file"] for r in rows))
        if files is None:
            files = these
            labels = {r["file"]: int(r["label"]) for r in rows}
            groups = {r["file"]: r["group"] for r in rows}
        elif these != files:
            raise DatasetError(f"{path} scores other crops than {paths[0]}")
        by_file = {r["file"]: r for r in rows}
        for m in members:
            if m in probs:
                raise DatasetError(f"{m} is scored in more than one table")
            shas = {r[f"weights:{m}"] for r in rows}
            if len(shas) != 1:
                raise DatasetError(f"{path} mixes weights versions of {m}")
            weights[m] = shas.pop()
            flips = {r.get(f"mirrored:{m}") or "0" for r in rows}
            if not flips <= {"0", "1"} or len(flips) != 1:
                raise DatasetError(
                    f"{path} mixes or misspells how {m} scored the crops "
                    f"(mirrored:{m} must be 0 or 1 on every row)"
                )
            if flips == {"1"}:
                mirrored.add(m)
            probs[m] = np.array([float(by_file[f][f"prob:{m}"]) for f in files], np.float64)
            if f"logit:{m}" in rows[0]:
                logits[m] = np.array([float(by_file[f][f"logit:{m}"]) for f in files], np.float64)
        if any(int(by_file[f]["label"]) != labels[f] for f in files):
            raise DatasetError(f"{path} labels crops differently from {paths[0]}")
    assert files is not None
    return ScoreTable(
        files=files,
        labels=np.array([labels[f] for f in files], np.float64),
        groups=tuple(groups[f] for f in files),
        probs=probs,
        weights=weights,
        logits=logits,
        mirrored=frozenset(mirrored),
    )


@dataclass(frozen=True)
class Candidate:
    """A training run standing in for a member's installed weights
    (:func:`with_candidate`): the calibration an export would fit on its
    validation logits, and its own metrics with it."""

    member: str
    run: Path
    temperature: float
    bias: float
    metrics: Mapping[str, Any]


def _table_key(path: PurePath, root: PurePath, known: frozenset[str]) -> str:
    """The score table's name for a crop a run listed at ``path``: relative
    to the run's data, or else the longest tail of the path the table holds
    (the epoch that wrote the predictions may have been trained in a session
    that spelled --data otherwise, or on a machine that kept the dataset
    elsewhere); a path neither places is listed under its own name, which
    the comparison with the table then reports."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        pass
    for start in range(len(path.parts)):
        tail = PurePath(*path.parts[start:]).as_posix()
        if tail in known:
            return tail
    return path.as_posix()


def with_candidate(table: ScoreTable, member: str, run: Path) -> tuple[ScoreTable, Candidate]:
    """``table`` with ``member``'s scores taken from the training run in
    ``run`` instead: its best epoch's logits on the validation crops
    (``val_predictions.csv``: the EMA weights, each crop as is, the run's
    precision), calibrated by the temperature and bias an export would fit on
    them. What a run would do for the ensemble can then be measured before it
    is exported. The run must have validated exactly the table's crops, with
    the same labels."""
    info_path, predictions = run / "run.json", run / "val_predictions.csv"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        with predictions.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError as e:
        raise DatasetError(
            f"{run} is not a training run that has validated an epoch (no {Path(e.filename).name})"
        ) from e
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read the training run {run}: {e}") from e
    if info.get("member") != member:
        raise DatasetError(f"{run} trained {info.get('member')!r}, not {member}")
    # The run wrote each crop's path under its --data (a folder, or its
    # metadata.csv); the tables name them relative to the dataset's root.
    root = PurePath(dataset_root(Path(str(info.get("data", "")))))
    known = frozenset(table.files)
    logits: dict[str, float] = {}
    labels: dict[str, int] = {}
    try:
        for r in rows:
            key = _table_key(PurePath(r["file"]), root, known)
            logits[key], labels[key] = float(r["logit"]), int(r["label"])
    except (KeyError, ValueError) as e:
        raise DatasetError(
            f"{predictions} does not list crops under the run's data ({root}): {e}"
        ) from e
    if set(logits) != set(table.files):
        raise DatasetError(
            f"{run} validated {len(logits)} crops and the scores hold {len(table.files)}, "
            f"{len(set(logits) - set(table.files))} of the run's not among them: score the "
            "same validation split of the same dataset"
        )
    if any(labels[f] != int(y) for f, y in zip(table.files, table.labels, strict=True)):
        raise DatasetError(f"{run} labels crops differently from the scores")
    z = np.array([logits[f] for f in table.files], np.float64)
    if not np.isfinite(z).all():
        raise DatasetError(f"{predictions} holds logits that are not finite numbers")
    temperature, bias = fit_member_calibration(z, table.labels)
    probs = calibrate(z, temperature, bias)
    candidate = Candidate(
        member=member,
        run=run,
        temperature=temperature,
        bias=bias,
        metrics=binary_metrics(probs, table.labels).to_dict(),
    )
    # Stands in for the weights' hash: the run's predictions, never installed.
    digest = "run:" + hashlib.sha256(predictions.read_bytes()).hexdigest()
    table = dataclasses.replace(
        table,
        probs={**table.probs, member: probs},
        logits={**table.logits, member: z},
        weights={**table.weights, member: digest},
        mirrored=table.mirrored - {member},
    )
    return table, candidate


def folds(groups: Sequence[str], k: int = CV_FOLDS) -> npt.NDArray[np.int64]:
    """A fold per crop from a hash of its group: stable across runs."""
    return np.array(
        [int.from_bytes(hashlib.sha256(g.encode()).digest()[:8], "big") % k for g in groups],
        dtype=np.int64,
    )


@dataclass(frozen=True)
class EnsembleFit:
    calibration: EnsembleCalibration
    # Metrics (binary_metrics.to_dict at 0.5) of the plain mean, the
    # calibration fitted on all crops, and its cross-validated predictions.
    before: Mapping[str, Any]
    in_sample: Mapping[str, Any]
    cross_validated: Mapping[str, Any]


def _fit(
    method: str, probs: Mapping[str, npt.NDArray[np.float64]], y: npt.NDArray[np.float64]
) -> tuple[dict[str, float] | None, float, float]:
    """``(member weights or None, slope, bias)`` of ``method`` on these crops."""
    if method == MEAN_METHOD:
        mean = np.mean(list(probs.values()), axis=0)
        return (None, *fit_platt(logit(mean), y))
    x = np.stack([logit(p) for p in probs.values()], axis=1)
    weights, slope, bias = fit_weighted_platt(x, y)
    total = sum(weights)
    return {m: w / total for m, w in zip(probs, weights, strict=True)}, slope, bias


def fit_ensemble(
    table: ScoreTable,
    members: Sequence[str],
    provenance: Mapping[str, Any] | None = None,
    k: int = CV_FOLDS,
    method: str = WEIGHTED_METHOD,
    temperatures: Mapping[str, float] | None = None,
    biases: Mapping[str, float] | None = None,
    inputs: Mapping[str, Mapping[str, Any]] | None = None,
) -> EnsembleFit:
    """Fit the combination ``method`` (:mod:`ensemble.calibration`) of
    ``members`` on ``table``; cross-validate it over ``k`` folds by group."""
    if method not in (MEAN_METHOD, WEIGHTED_METHOD):
        raise ValueError(f"unknown ensemble method {method!r}")
    missing = [m for m in members if m not in table.probs]
    if missing:
        raise DatasetError(f"no scores for {', '.join(missing)}")
    y = table.labels
    probs = {m: table.probs[m] for m in members}
    sha = {m: table.weights[m] for m in members}
    fold = folds(table.groups, k)
    predicted = np.zeros_like(y)
    for f in range(k):
        held = fold == f
        if not held.any():
            continue
        if len(np.unique(y[~held])) < 2:
            raise DatasetError(
                f"too few crops for {k}-fold cross-validation: a fold's training part "
                "has only one label (score more validation crops)"
            )
        w, s, b = _fit(method, {m: p[~held] for m, p in probs.items()}, y[~held])
        part = EnsembleCalibration(sha, s, b, member_weights=w)
        predicted[held] = part.apply({m: p[held] for m, p in probs.items()})
    before = binary_metrics(np.mean(list(probs.values()), axis=0), y).to_dict()
    cv = binary_metrics(predicted, y).to_dict()
    weights, slope, bias = _fit(method, probs, y)
    calibration = EnsembleCalibration(
        members=sha,
        slope=slope,
        bias=bias,
        metrics={"n": len(y), "folds": k, "before": before, "cross_validated": cv},
        provenance=dict(provenance or {}),
        member_weights=weights,
        temperatures=None if temperatures is None else {m: temperatures[m] for m in members},
        mirrored=tuple(sorted(table.mirrored & set(members))),
        member_biases=None if biases is None else {m: biases[m] for m in members},
        inputs=None if inputs is None else {m: inputs[m] for m in members if m in inputs},
    )
    in_sample = binary_metrics(calibration.apply(probs), y).to_dict()
    return EnsembleFit(calibration, before, in_sample, cv)
