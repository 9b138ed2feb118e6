from __future__ import annotations

import math

import numpy as np
import pytest

from ensemble.evaluation import (
    MetricsError,
    binary_metrics,
    choose_threshold,
    report,
    roc_auc,
    write_report_figures,
)
from ensemble.training.calibrate import CalibrationError, fit_temperature, nll

PROBS = [0.9, 0.8, 0.3, 0.6, 0.2, 0.1]
LABELS = [1, 1, 1, 0, 0, 0]


def test_metrics_match_hand_computed_values() -> None:
    m = binary_metrics(PROBS, LABELS, threshold=0.5)
    # Called fake: 0.9, 0.8, 0.6 -> tp 2, fp 1; 0.3 is a missed fake.
    assert m.confusion == ((2, 1), (1, 2))
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.precision == pytest.approx(2 / 3) and m.recall == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(2 / 3)
    # Fake beats real in 3 + 3 + 2 of 9 pairs.
    assert m.auc == pytest.approx(8 / 9)
    expected = -(
        math.log(0.9) + math.log(0.8) + math.log(0.3) + math.log(0.4) + math.log(0.8)
        + math.log(0.9)
    ) / 6  # fmt: skip
    assert m.log_loss == pytest.approx(expected)


def test_auc_counts_ties_as_half_and_is_none_for_one_class() -> None:
    assert roc_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert roc_auc([0.2, 0.7], [1, 1]) is None


def test_bad_inputs_are_refused_with_reasons() -> None:
    with pytest.raises(MetricsError, match="labels must be 0"):
        binary_metrics([0.5], [2])
    with pytest.raises(MetricsError, match="2 scores but 1 labels"):
        binary_metrics([0.5, 0.2], [1])


def test_report_has_the_documented_schema_and_figures(tmp_path) -> None:
    probs = {"a": np.array(PROBS), "b": np.array(PROBS[::-1])}
    result = report(probs, LABELS)
    assert set(result) == {"ensemble", "members", "n"}
    assert result["n"] == {"real": 3, "fake": 3}
    keys = {"auc", "log_loss", "accuracy", "precision", "recall", "f1", "confusion"}
    assert set(result["ensemble"]) == keys and set(result["members"]["a"]) == keys
    assert result["members"]["a"]["confusion"] == [[2, 1], [1, 2]]
    paths = write_report_figures(probs, LABELS, result, tmp_path)
    assert {p.name for p in paths} == {
        "roc.png", "confusion-ensemble.png", "confusion-a.png", "confusion-b.png"
    }  # fmt: skip
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_temperature_recovers_a_known_scale() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 3, 20_000)
    labels = (rng.random(20_000) < 1 / (1 + np.exp(-true_logits))).astype(float)
    t = fit_temperature(2.5 * true_logits, labels)
    assert t == pytest.approx(2.5, rel=0.06)
    assert nll(2.5 * true_logits, labels, t) < nll(2.5 * true_logits, labels, 1.0)


def test_temperature_needs_both_classes() -> None:
    with pytest.raises(CalibrationError, match="both real and fake"):
        fit_temperature([1.0, 2.0], [1, 1])


def test_threshold_rule_picks_youden_optimum_and_smallest_band() -> None:
    # Reals at 0.1-0.35, fakes at 0.45-0.9: perfectly separated at 0.45.
    reals = np.linspace(0.1, 0.35, 20)
    fakes = np.linspace(0.45, 0.9, 20)
    c = choose_threshold(np.r_[reals, fakes], np.r_[np.zeros(20), np.ones(20)])
    assert c.threshold == pytest.approx(0.45) and c.youden_j == pytest.approx(1.0)
    assert c.uncertain_band == 0.0 and c.target_met
    # Four real outliers above the threshold need a band to keep 95% outside it.
    noisy = np.r_[reals[:-4], [0.47, 0.5, 0.52, 0.55], fakes]
    c2 = choose_threshold(noisy, np.r_[np.zeros(20), np.ones(20)])
    assert c2.uncertain_band > 0 and c2.accuracy_outside_band is not None
    assert c2.accuracy_outside_band >= 0.95
