"""The ensemble's own calibration: how the members' probabilities become one.

Each member's probability is calibrated on its own (a temperature and a
bias, fitted at export or by ``calibrate_member``). A plain mean of
calibrated probabilities from models that disagree is pulled towards 0.5: it
ranks well but is under-confident, and a weak member counts as much as a
strong one. Measured on dfdc_faces val with the shipped members (README, "The
ensemble"), the plain mean ranked below the best member alone.

So the ensemble score is fitted on validation crops (``manage.py
calibrate_ensemble``), in one of two forms:

- ``platt_on_mean``: ``sigmoid(slope * logit(mean) + bias)``. Monotone in the
  mean, so it changes no ranking (AUC), only what the number means.
- ``platt_on_weighted_logits``: ``sigmoid(slope * sum_m(w_m * logit(p_m)) +
  bias)`` with ``w_m >= 0`` summing to 1: a weighted mean of the members'
  logits, then Platt. The weights let a stronger member count for more; every
  member still pushes only in the direction of its own evidence.

The fit belongs to one exact set of members and weights: ``weights/ensemble.json``
records each member's weights sha256, temperature, bias and whether it scored
faces mirrored too (``LoadedMember.mirror``), and a calibration whose members,
weights or scoring differ from the ones analysing is not applied (the plain
mean is used, and the result says why).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ensemble.errors import WeightsError

ENSEMBLE_FILE = "ensemble.json"
MEAN_METHOD = "platt_on_mean"
WEIGHTED_METHOD = "platt_on_weighted_logits"
CALIBRATION_VERSION = 1
# Probabilities are clipped this far from 0 and 1 before the logit.
_EPS = 1e-6
# Temperatures equal within this (relative) are the same calibration.
TEMPERATURE_RTOL = 1e-6
# Member biases equal within this are the same calibration.
BIAS_ATOL = 1e-6


class EnsembleCalibrationError(WeightsError):
    """An ensemble calibration file that cannot be read."""


def logit(p: npt.ArrayLike) -> npt.NDArray[np.float64]:
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    out: npt.NDArray[np.float64] = np.log(q) - np.log1p(-q)
    return out


def input_record(
    input_size: int,
    crop: Mapping[str, Any] | None,
    mean: Collection[float],
    std: Collection[float],
) -> dict[str, Any]:
    """How a member prepares a face (input size, crop policy or ``None`` for
    the registry's, normalisation), as JSON keeps it: what changes a member's
    scores without changing its weights' hash, so an ensemble fit records it."""
    record = {
        "input_size": int(input_size),
        "crop": None if crop is None else dict(crop),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
    }
    normal: dict[str, Any] = json.loads(json.dumps(record, sort_keys=True))
    return normal


@dataclass(frozen=True)
class EnsembleCalibration:
    """The fitted combination of the members in ``members`` (name -> weights
    sha256): ``sigmoid(slope * logit(mean) + bias)``, or with
    ``member_weights`` (name -> weight, summing to 1)
    ``sigmoid(slope * sum(weight * logit(p)) + bias)``."""

    members: Mapping[str, str]
    slope: float
    bias: float
    metrics: Mapping[str, Any] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    version: int = CALIBRATION_VERSION
    member_weights: Mapping[str, float] | None = None
    # The members' temperatures the fit was made with (name -> T). A member
    # re-exported from the same checkpoint keeps its weights' sha256 but may
    # get another temperature, which changes its calibrated logits: the fit
    # then no longer applies. ``None``: a file written before this was kept.
    temperatures: Mapping[str, float] | None = None
    # The members whose scores were the mean of each face as is and mirrored
    # (sorted names). ``None``: a file written before members could mirror,
    # when every member scored faces as is.
    mirrored: tuple[str, ...] | None = None
    # The members' calibration biases the fit was made with (name -> bias,
    # ``ensemble.scoring.calibrate``). ``None``: a file written before members
    # had a bias, when every bias was 0; a member missing from it had 0.
    member_biases: Mapping[str, float] | None = None
    # How each member prepared faces for the fit (name -> :func:`input_record`).
    # An import again with another --input-size, or an export of the same run
    # with another --crop, keeps the weights' hash but changes the scores.
    # ``None``: a file written before this was kept.
    inputs: Mapping[str, Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("an ensemble calibration names at least one member")
        if not (np.isfinite(self.slope) and self.slope > 0 and np.isfinite(self.bias)):
            raise ValueError(
                f"slope must be positive and finite and bias finite, got {self.slope}, {self.bias}"
            )
        w = self.member_weights
        if self.mirrored is not None and not set(self.mirrored) <= set(self.members):
            raise ValueError("mirrored members must be calibrated members")
        if self.member_biases is not None:
            if not set(self.member_biases) <= set(self.members):
                raise ValueError("member biases must be of calibrated members")
            if not all(math.isfinite(b) for b in self.member_biases.values()):
                raise ValueError("member biases must be finite")
        if w is not None:
            if set(w) != set(self.members):
                raise ValueError("member weights must name exactly the calibrated members")
            values = np.array(list(w.values()), dtype=np.float64)
            if not (np.isfinite(values).all() and (values >= 0).all()):
                raise ValueError("member weights must be finite and not negative")
            if abs(values.sum() - 1.0) > 1e-6:
                raise ValueError(f"member weights must sum to 1, not {values.sum():.6f}")

    @property
    def method(self) -> str:
        return MEAN_METHOD if self.member_weights is None else WEIGHTED_METHOD

    def score(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``sigmoid(slope * x + bias)``."""
        z = self.slope * np.asarray(x, dtype=np.float64) + self.bias
        out: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-z))
        return out

    def apply(self, probs: Mapping[str, npt.ArrayLike]) -> npt.NDArray[np.float64]:
        """The ensemble probability from each member's calibrated probabilities
        (name -> array, one entry per face; every calibrated member present)."""
        missing = set(self.members) - set(probs)
        if missing:
            raise ValueError(f"no probabilities for {', '.join(sorted(missing))}")
        if self.member_weights is None:
            mean = np.mean([np.asarray(probs[m], dtype=np.float64) for m in self.members], axis=0)
            return self.score(logit(mean))
        x = sum(w * logit(probs[m]) for m, w in self.member_weights.items())
        return self.score(x)

    def mismatch(
        self,
        installed: Mapping[str, str | None],
        temperatures: Mapping[str, float] | None = None,
        mirrored: Collection[str] | None = None,
        biases: Mapping[str, float] | None = None,
        inputs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> str | None:
        """Why this calibration does not fit the members analysing
        (name -> weights sha256; name -> temperature, the names of those
        that score faces mirrored too, name -> bias and name ->
        :func:`input_record`, when known), or ``None`` when it does."""
        if set(installed) != set(self.members):
            return (
                f"fitted for {', '.join(sorted(self.members))}, not {', '.join(sorted(installed))}"
            )
        changed = sorted(n for n, sha in installed.items() if sha != self.members[n])
        if changed:
            return f"fitted for other weights of {', '.join(changed)}"
        if self.temperatures is not None and temperatures is not None:
            retuned = sorted(
                n
                for n, t in temperatures.items()
                if n in self.temperatures
                and not math.isclose(t, self.temperatures[n], rel_tol=TEMPERATURE_RTOL)
            )
            if retuned:
                return f"fitted with another temperature of {', '.join(retuned)}"
        if biases is not None:
            fitted_biases = self.member_biases or {}
            shifted = sorted(
                n
                for n, b in biases.items()
                if n in self.members
                and not math.isclose(b, fitted_biases.get(n, 0.0), rel_tol=0, abs_tol=BIAS_ATOL)
            )
            if shifted:
                return f"fitted with another calibration bias of {', '.join(shifted)}"
        if self.inputs is not None and inputs is not None:
            reprepared = sorted(
                n
                for n, record in inputs.items()
                if n in self.inputs and dict(record) != dict(self.inputs[n])
            )
            if reprepared:
                return (
                    f"fitted on faces prepared otherwise (input size, crop or normalisation) "
                    f"for {', '.join(reprepared)}"
                )
        if mirrored is not None:
            fitted = set(self.mirrored or ())
            now = set(mirrored) & set(installed)
            if now - fitted:
                return (
                    f"fitted on faces scored as is only by {', '.join(sorted(now - fitted))}, "
                    "which now scores them mirrored too"
                )
            if fitted - now:
                return (
                    f"fitted on faces scored as is and mirrored by "
                    f"{', '.join(sorted(fitted - now))}, which now scores them as is only"
                )
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "method": self.method,
            "members": dict(sorted(self.members.items())),
        }
        if self.member_weights is not None:
            out["member_weights"] = dict(sorted(self.member_weights.items()))
        if self.temperatures is not None:
            out["temperatures"] = dict(sorted(self.temperatures.items()))
        if self.mirrored is not None:
            out["mirrored"] = sorted(self.mirrored)
        if self.member_biases is not None:
            out["member_biases"] = dict(sorted(self.member_biases.items()))
        if self.inputs is not None:
            out["inputs"] = {n: dict(r) for n, r in sorted(self.inputs.items())}
        return out | {
            "slope": self.slope,
            "bias": self.bias,
            "metrics": dict(self.metrics),
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> EnsembleCalibration:
        try:
            if data.get("version") != CALIBRATION_VERSION:
                raise ValueError(f"version {data.get('version')} is not {CALIBRATION_VERSION}")
            method = data.get("method")
            if method not in (MEAN_METHOD, WEIGHTED_METHOD):
                raise ValueError(f"unknown method {method!r}")
            weights = data.get("member_weights")
            temps = data.get("temperatures")
            mirrored = data.get("mirrored")
            biases = data.get("member_biases")
            inputs = data.get("inputs")
            if inputs is not None and not (
                isinstance(inputs, dict) and all(isinstance(r, dict) for r in inputs.values())
            ):
                raise ValueError(f"inputs must map member names to objects, not {inputs!r}")
            if mirrored is not None and not (
                isinstance(mirrored, list) and all(isinstance(m, str) for m in mirrored)
            ):
                raise ValueError(f"mirrored must be a list of member names, not {mirrored!r}")
            if (method == WEIGHTED_METHOD) != (weights is not None):
                raise ValueError(f"{method} {'needs' if weights is None else 'takes no'} weights")
            return cls(
                members={str(k): str(v) for k, v in dict(data["members"]).items()},
                slope=float(data["slope"]),
                bias=float(data["bias"]),
                metrics=dict(data.get("metrics", {})),
                provenance=dict(data.get("provenance", {})),
                member_weights=(
                    None if weights is None else {str(k): float(v) for k, v in weights.items()}
                ),
                temperatures=(
                    None if temps is None else {str(k): float(v) for k, v in temps.items()}
                ),
                mirrored=None if mirrored is None else tuple(sorted(mirrored)),
                member_biases=(
                    None if biases is None else {str(k): float(v) for k, v in biases.items()}
                ),
                inputs=(
                    None
                    if inputs is None
                    else {
                        str(k): input_record(r["input_size"], r["crop"], r["mean"], r["std"])
                        for k, r in inputs.items()
                    }
                ),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise EnsembleCalibrationError(
                f"{source} is not a valid ensemble calibration: {e}"
            ) from e


def calibration_path(weights_dir: Path) -> Path:
    return Path(weights_dir) / ENSEMBLE_FILE


def read_calibration(weights_dir: Path) -> EnsembleCalibration | None:
    """The installed ensemble calibration, or ``None`` when there is none."""
    path = calibration_path(weights_dir)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise EnsembleCalibrationError(f"{path} cannot be read: {e}") from e
    if not isinstance(data, dict):
        raise EnsembleCalibrationError(f"{path} is not a JSON object")
    return EnsembleCalibration.from_dict(data, str(path))


def write_calibration(weights_dir: Path, calibration: EnsembleCalibration) -> Path:
    """Write ``weights_dir/ensemble.json`` atomically."""
    path = calibration_path(weights_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(calibration.to_dict(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class Combiner:
    """How the members' calibrated probabilities become the ensemble's:
    their mean, then the calibration when one fits these members."""

    calibration: EnsembleCalibration | None = None
    # Why an installed calibration is not applied (None: applied or absent).
    skipped: str | None = None

    @classmethod
    def for_members(
        cls,
        calibration: EnsembleCalibration | None,
        installed: Mapping[str, str | None],
        temperatures: Mapping[str, float] | None = None,
        mirrored: Collection[str] | None = None,
        biases: Mapping[str, float] | None = None,
        inputs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Combiner:
        if calibration is None:
            return cls()
        reason = calibration.mismatch(installed, temperatures, mirrored, biases, inputs)
        return cls(None, reason) if reason else cls(calibration)

    def __call__(self, probs: Mapping[str, npt.ArrayLike]) -> npt.NDArray[np.float64]:
        if self.calibration is not None:
            return self.calibration.apply(probs)
        out: npt.NDArray[np.float64] = np.mean(
            [np.asarray(p, dtype=np.float64) for p in probs.values()], axis=0
        )
        return out

    def describe(self) -> dict[str, Any]:
        """What the result records about the combination."""
        c = self.calibration
        if c is not None:
            if c.member_weights is None:
                return {"method": "mean, then platt", "slope": c.slope, "bias": c.bias}
            return {
                "method": "weighted mean of logits, then platt",
                "weights": dict(sorted(c.member_weights.items())),
                "slope": c.slope,
                "bias": c.bias,
            }
        note = {"method": "mean"}
        if self.skipped:
            note["calibration_not_applied"] = self.skipped
        return note
