"""The ensemble's own calibration: a Platt layer on the members' mean.

Each member's probability is calibrated on its own (temperature scaling,
fitted at export), and a face's score is their mean. A mean of calibrated
probabilities from models that disagree is pulled towards 0.5: it ranks well
but is under-confident, and one member shifted towards "real" (B7 here)
shifts it too. Measured on dfdc_faces val with the shipped members, the plain
mean had log loss 0.520 and ECE 0.096 against 0.499 / 0.029 for the best
member alone (README, "The ensemble").

So the ensemble score is recalibrated as a whole:
``sigmoid(slope * logit(mean) + bias)``, two numbers fitted on validation
crops (``manage.py calibrate_ensemble``). It is monotone, so it changes no
ranking (AUC) and no member's score, only what the ensemble's number means.

The fit belongs to one exact set of members and weights: ``weights/ensemble.json``
records each member's weights sha256, and a calibration whose members or
weights differ from the ones analysing is not applied (the plain mean is
used, and the result says why).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ensemble.errors import WeightsError

ENSEMBLE_FILE = "ensemble.json"
CALIBRATION_VERSION = 1
# Probabilities are clipped this far from 0 and 1 before the logit.
_EPS = 1e-6


class EnsembleCalibrationError(WeightsError):
    """An ensemble calibration file that cannot be read."""


def logit(p: npt.ArrayLike) -> npt.NDArray[np.float64]:
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    out: npt.NDArray[np.float64] = np.log(q) - np.log1p(-q)
    return out


@dataclass(frozen=True)
class EnsembleCalibration:
    """``sigmoid(slope * logit(mean) + bias)`` for the members in ``members``
    (name -> weights sha256)."""

    members: Mapping[str, str]
    slope: float
    bias: float
    metrics: Mapping[str, Any] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    version: int = CALIBRATION_VERSION

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("an ensemble calibration names at least one member")
        if not (np.isfinite(self.slope) and self.slope > 0 and np.isfinite(self.bias)):
            raise ValueError(
                f"slope must be positive and finite and bias finite, got {self.slope}, {self.bias}"
            )

    def apply(self, mean_probs: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The calibrated ensemble probability of each mean."""
        z = self.slope * logit(mean_probs) + self.bias
        out: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-z))
        return out

    def mismatch(self, installed: Mapping[str, str | None]) -> str | None:
        """Why this calibration does not fit the members analysing
        (name -> weights sha256), or ``None`` when it does."""
        if set(installed) != set(self.members):
            return (
                f"fitted for {', '.join(sorted(self.members))}, not {', '.join(sorted(installed))}"
            )
        changed = sorted(n for n, sha in installed.items() if sha != self.members[n])
        if changed:
            return f"fitted for other weights of {', '.join(changed)}"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "method": "platt_on_mean",
            "members": dict(sorted(self.members.items())),
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
            if data.get("method") != "platt_on_mean":
                raise ValueError(f"unknown method {data.get('method')!r}")
            return cls(
                members={str(k): str(v) for k, v in dict(data["members"]).items()},
                slope=float(data["slope"]),
                bias=float(data["bias"]),
                metrics=dict(data.get("metrics", {})),
                provenance=dict(data.get("provenance", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
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
        cls, calibration: EnsembleCalibration | None, installed: Mapping[str, str | None]
    ) -> Combiner:
        if calibration is None:
            return cls()
        reason = calibration.mismatch(installed)
        return cls(None, reason) if reason else cls(calibration)

    def __call__(self, probs: Mapping[str, npt.ArrayLike]) -> npt.NDArray[np.float64]:
        mean = np.mean([np.asarray(p, dtype=np.float64) for p in probs.values()], axis=0)
        if self.calibration is None:
            out: npt.NDArray[np.float64] = mean
            return out
        return self.calibration.apply(mean)

    def describe(self) -> dict[str, Any]:
        """What the result records about the combination."""
        if self.calibration is not None:
            return {
                "method": "mean, then platt",
                "slope": self.calibration.slope,
                "bias": self.calibration.bias,
            }
        note = {"method": "mean"}
        if self.skipped:
            note["calibration_not_applied"] = self.skipped
        return note
