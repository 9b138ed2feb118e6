"""From logits to a verdict.

- A member's logit becomes a calibrated probability by temperature scaling
  and a bias (Platt scaling written as ``sigmoid(logit / T + bias)``).
- A face's score is the mean of its members' probabilities (the seed's
  "average of the three scores").
- A person's score aggregates their faces over frames: the mean, or selimsef's
  "confident" strategy, which trusts a clear majority of confident frames.
- The video's score is its most suspicious person's: one manipulated face
  among genuine ones flags the video.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from ensemble.config import Aggregation, ScoringConfig
from ensemble.errors import NonFiniteScoreError

Verdict = Literal["fake", "uncertain", "real", "no_face"]

# selimsef/dfdc_deepfake_challenge's confident strategy, with its constants named.
CONFIDENT_FAKE_PROB = 0.8  # a frame above this is a confident fake
CONFIDENT_REAL_PROB = 0.2  # a frame below this is a confident real
CONFIDENT_FAKE_DIVISOR = 2.5  # more than n // 2.5 confident fakes ...
CONFIDENT_MIN_FAKES = 11  # ... and more than 11 of them: mean of the confident fakes
CONFIDENT_REAL_SHARE = 0.9  # more than 90% confident reals: mean of the confident reals


def calibrate(
    logits: npt.ArrayLike, temperature: float, bias: float = 0.0
) -> npt.NDArray[np.float64]:
    """Temperature-scaled, shifted sigmoid: ``sigmoid(logit / T + bias)``.

    The temperature fixes how confident a member is; the bias fixes a member
    whose scores lean to one side (at ``bias`` 0 a logit of 0 is 0.5)."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    if not math.isfinite(bias):
        raise ValueError(f"bias must be a finite number, got {bias}")
    z = np.asarray(logits, dtype=np.float64) / temperature + bias
    out: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-z))
    return out


def confident_strategy(probs: Sequence[float] | npt.NDArray[np.floating]) -> float:
    """selimsef's rule: many confident fake frames mean fake, whatever the
    rest say; overwhelmingly confident real frames mean real; else the mean."""
    p = np.asarray(probs, dtype=np.float64)
    n = len(p)
    fakes = p[p > CONFIDENT_FAKE_PROB]
    if len(fakes) > n // CONFIDENT_FAKE_DIVISOR and len(fakes) > CONFIDENT_MIN_FAKES:
        return float(fakes.mean())
    reals = p[p < CONFIDENT_REAL_PROB]
    if len(reals) > CONFIDENT_REAL_SHARE * n:
        return float(reals.mean())
    return float(p.mean())


def aggregate(probs: Sequence[float] | npt.NDArray[np.floating], method: Aggregation) -> float:
    """One score from a person's per-frame scores."""
    if len(probs) == 0:
        raise ValueError("cannot aggregate an empty list of scores")
    if method == "confident":
        return confident_strategy(probs)
    return float(np.mean(probs))


def verdict_for(score: float, config: ScoringConfig) -> Verdict:
    """``fake`` at or above threshold + band, ``real`` below threshold - band,
    ``uncertain`` between. A NaN or infinite score is a
    :class:`~ensemble.errors.NonFiniteScoreError`, never a verdict (NaN
    compares false both ways and would read as "uncertain")."""
    if not math.isfinite(score):
        raise NonFiniteScoreError(f"score {score} is not a number; no verdict is given")
    if score >= config.threshold + config.uncertain_band:
        return "fake"
    if score < config.threshold - config.uncertain_band:
        return "real"
    return "uncertain"
