from __future__ import annotations

import numpy as np
import pytest

from ensemble.config import AnalysisConfig, ScoringConfig
from ensemble.errors import ConfigError, NonFiniteScoreError
from ensemble.scoring import (
    CONFIDENT_MIN_FAKES,
    aggregate,
    calibrate,
    confident_strategy,
    verdict_for,
)


def test_temperature_softens_probabilities() -> None:
    p1, p2 = calibrate([2.0], 1.0)[0], calibrate([2.0], 2.0)[0]
    assert p1 == pytest.approx(1 / (1 + np.exp(-2)))
    assert 0.5 < p2 < p1
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive number"):
            calibrate([1.0], bad)


def test_bias_shifts_the_probability_after_the_temperature() -> None:
    # sigmoid(2 / 2 + 0.5) = sigmoid(1.5): the bias is added to the scaled logit.
    assert calibrate([2.0], 2.0, 0.5)[0] == pytest.approx(1 / (1 + np.exp(-1.5)))
    assert calibrate([0.0], 1.3, -0.4)[0] < 0.5  # a logit of 0 is no longer 0.5
    assert calibrate([2.0], 2.0, 0.0)[0] == calibrate([2.0], 2.0)[0]
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            calibrate([1.0], 1.0, bad)


def test_confident_strategy_trusts_many_confident_fakes() -> None:
    probs = [0.95] * (CONFIDENT_MIN_FAKES + 2) + [0.1] * 19  # 13 of 32 frames
    assert confident_strategy(probs) == pytest.approx(0.95)
    assert np.mean(probs) < 0.5  # the plain mean would have called it real


def test_confident_strategy_needs_more_than_the_minimum_count() -> None:
    probs = [0.95] * CONFIDENT_MIN_FAKES + [0.1] * 5
    assert confident_strategy(probs) == pytest.approx(np.mean(probs))


def test_confident_strategy_averages_confident_reals_when_they_dominate() -> None:
    probs = [0.05] * 30 + [0.6] * 2
    assert confident_strategy(probs) == pytest.approx(0.05)


def test_aggregate_mean_and_empty() -> None:
    assert aggregate([0.2, 0.4], "mean") == pytest.approx(0.3)
    with pytest.raises(ValueError):
        aggregate([], "mean")


@pytest.mark.parametrize(
    "score,verdict",
    [(0.9, "fake"), (0.6, "fake"), (0.59, "uncertain"), (0.4, "uncertain"), (0.39, "real")],
)
def test_verdict_bands(score: float, verdict: str) -> None:
    assert verdict_for(score, ScoringConfig(threshold=0.5, uncertain_band=0.1)) == verdict


@pytest.mark.parametrize("score", [float("nan"), float("inf"), float("-inf")])
def test_a_score_that_is_not_a_number_gets_no_verdict(score: float) -> None:
    with pytest.raises(NonFiniteScoreError):
        verdict_for(score, ScoringConfig())


@pytest.mark.parametrize(("threshold", "band"), [(0.95, 0.1), (0.3, 0.35), (0.1, 0.1)])
def test_a_band_that_leaves_no_room_for_fake_or_real_is_refused(
    threshold: float, band: float
) -> None:
    with pytest.raises(ConfigError, match="must stay inside"):
        ScoringConfig(threshold=threshold, uncertain_band=band)
    ScoringConfig(threshold=threshold, uncertain_band=min(threshold, 1 - threshold) / 2)


def test_invalid_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="threshold must be in"):
        ScoringConfig(threshold=1.5)
    with pytest.raises(ValueError):
        AnalysisConfig(members=())
    with pytest.raises(ValueError):
        AnalysisConfig(members=("a", "a"))
    with pytest.raises(ValueError, match="between 1 and 256"):
        AnalysisConfig(frames=1000)
    for batch in (0, -4):
        with pytest.raises(ConfigError, match="batch_size must be at least 1"):
            AnalysisConfig(batch_size=batch)
