from __future__ import annotations

import math

import numpy as np
import pytest

from ensemble.evaluation import (
    ECE_BINS,
    MetricsError,
    binary_metrics,
    choose_threshold,
    expected_calibration_error,
    reliability_bins,
    report,
    roc_auc,
    save_figure,
    write_report_figures,
)
from ensemble.training.calibrate import (
    CalibrationError,
    fit_member_calibration,
    fit_temperature,
    nll,
)

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
    expected = (
        -(
            math.log(0.9)
            + math.log(0.8)
            + math.log(0.3)
            + math.log(0.4)
            + math.log(0.8)
            + math.log(0.9)
        )
        / 6
    )
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
    keys = {"auc", "log_loss", "ece", "accuracy", "precision", "recall", "f1", "confusion"}
    assert set(result["ensemble"]) == keys and set(result["members"]["a"]) == keys
    assert result["members"]["a"]["confusion"] == [[2, 1], [1, 2]]
    paths = write_report_figures(probs, LABELS, result, tmp_path)
    assert {p.name for p in paths} == {
        "roc.png",
        "roc.svg",
        "reliability.png",
        "reliability.svg",
        "confusion-ensemble.png",
        "confusion-a.png",
        "confusion-b.png",
    }
    for path in paths:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert b"<svg" in path.read_bytes()[:2000]


def test_ece_of_a_tiny_example_equals_the_hand_computed_value() -> None:
    # 15 bins of width 1/15: 0.1 -> [1/15, 2/15) twice (fake rate 0.5),
    # 0.7 -> [10/15, 11/15), 0.9 -> [13/15, 14/15), 1.0 -> the closed last bin.
    ece = expected_calibration_error([0.1, 0.1, 0.7, 0.9, 1.0], [0, 1, 1, 1, 1])
    expected = 2 / 5 * abs(0.5 - 0.1) + 1 / 5 * 0.3 + 1 / 5 * 0.1 + 1 / 5 * 0.0
    assert ece == pytest.approx(expected) and expected == pytest.approx(0.24)
    assert binary_metrics([0.1, 0.1, 0.7, 0.9, 1.0], [0, 1, 1, 1, 1]).ece == pytest.approx(0.24)


def test_ece_is_small_for_calibrated_scores_and_large_for_overconfident_ones() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.001, 0.999, 20_000)
    labels = (rng.random(20_000) < p).astype(float)  # P(fake) is exactly p
    assert expected_calibration_error(p, labels) < 0.03
    # The same ranking pushed towards 0 and 1: the logits tripled.
    logits = np.log(p / (1 - p))
    overconfident = 1 / (1 + np.exp(-3 * logits))
    assert expected_calibration_error(overconfident, labels) > 0.1
    # Calibration is not ranking: the AUC is unchanged.
    assert roc_auc(overconfident, labels) == pytest.approx(roc_auc(p, labels))


def test_reliability_bins_are_equal_width_with_the_last_closed_and_sum_to_n() -> None:
    bins = reliability_bins([0.0, 0.25, 0.49, 0.5, 0.99, 1.0], [0, 0, 1, 1, 1, 1], n_bins=4)
    assert bins.counts.tolist() == [1, 2, 1, 2]  # 0.25 opens bin 1, 1.0 is in bin 3
    assert bins.edges.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert bins.observed_rate[1] == pytest.approx(0.5)
    assert bins.mean_predicted[1] == pytest.approx(0.37)
    rng = np.random.default_rng(1)
    p = rng.beta(0.5, 0.5, 1_000)
    full = reliability_bins(p, rng.random(1_000) < 0.5)
    assert len(full.counts) == ECE_BINS and full.n == 1_000
    assert int(full.counts.sum()) == 1_000
    # A probability written as k / 15 lies in bin k.
    on_edges = reliability_bins([k / ECE_BINS for k in range(ECE_BINS)], [0] * ECE_BINS)
    assert on_edges.counts.tolist() == [1] * ECE_BINS
    # Empty bins have no mean and no rate, and do not count towards the ECE.
    assert np.isnan(reliability_bins([0.1], [1], n_bins=4).observed_rate[2])


def test_ece_refuses_scores_that_are_not_probabilities() -> None:
    with pytest.raises(MetricsError, match="probabilities in \\[0, 1\\]"):
        expected_calibration_error([1.5, 0.2], [1, 0])
    with pytest.raises(MetricsError, match="at least one bin"):
        expected_calibration_error([0.5], [1], n_bins=0)


def test_save_figure_chooses_the_format_from_the_suffix(tmp_path) -> None:
    from matplotlib.figure import Figure

    svg = save_figure(Figure(), tmp_path / "f.svg")
    assert b"<svg" in svg.read_bytes()[:2000]
    with pytest.raises(ValueError, match=r"use one of \.png, \.svg"):
        save_figure(Figure(), tmp_path / "f.gif")


def test_temperature_recovers_a_known_scale() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 3, 20_000)
    labels = (rng.random(20_000) < 1 / (1 + np.exp(-true_logits))).astype(float)
    t = fit_temperature(2.5 * true_logits, labels)
    assert t == pytest.approx(2.5, rel=0.06)
    assert nll(2.5 * true_logits, labels, t) < nll(2.5 * true_logits, labels, 1.0)


def test_member_calibration_recovers_a_known_scale_and_shift() -> None:
    """Logits that are 2.5 times too large and shifted by +3 (a member that
    leans towards "fake"): the temperature alone cannot undo the shift."""
    rng = np.random.default_rng(1)
    true_logits = rng.normal(0, 2, 20_000)
    labels = (rng.random(20_000) < 1 / (1 + np.exp(-true_logits))).astype(float)
    seen = 2.5 * true_logits + 3.0
    t, b = fit_member_calibration(seen, labels)
    # sigmoid(seen / t + b) = sigmoid(true): t = 2.5 and b = -3 / 2.5.
    assert t == pytest.approx(2.5, rel=0.06) and b == pytest.approx(-1.2, abs=0.08)
    shifted = 1 / (1 + np.exp(-(seen / t + b)))
    only_t = fit_temperature(seen, labels)
    assert binary_metrics(shifted, labels).log_loss < nll(seen, labels, only_t) - 0.05
    with pytest.raises(CalibrationError, match="both real and fake"):
        fit_member_calibration([1.0, 2.0], [1, 1])


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


def test_the_threshold_is_the_best_inside_the_range_not_the_best_clipped() -> None:
    # The optimum overall is 0.98 (J 0.55); clipped to 0.95 it would be J 0.05,
    # while 0.7 inside the range gives J 0.5.
    reals = np.r_[np.full(10, 0.2), np.full(10, 0.96)]
    fakes = np.r_[np.full(9, 0.7), np.full(11, 0.98)]
    c = choose_threshold(np.r_[reals, fakes], np.r_[np.zeros(20), np.ones(20)])
    assert c.threshold == pytest.approx(0.7) and c.youden_j == pytest.approx(0.5)


def test_youdens_j_is_that_of_the_threshold_given_after_the_clip() -> None:
    # Separable only above 0.97: the optimum (J = 1) is clipped to 0.95,
    # where two reals are called fake.
    reals = np.r_[np.linspace(0.1, 0.5, 18), 0.955, 0.96]
    fakes = np.linspace(0.97, 0.99, 20)
    c = choose_threshold(np.r_[reals, fakes], np.r_[np.zeros(20), np.ones(20)])
    assert c.threshold == 0.95
    assert c.youden_j == pytest.approx(1.0 - 2 / 20)


@pytest.mark.parametrize("centre", [0.06, 0.12, 0.88, 0.94])
def test_the_chosen_threshold_and_band_are_always_a_valid_scoring_config(centre: float) -> None:
    """Scores crowded near 0 or 1 pushed the band past the edge before, and
    the site then refused the threshold.json it was told to use."""
    from ensemble.config import ScoringConfig

    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(200), np.ones(200)]
    # Heavily overlapping classes around ``centre``: the band wants to be wide.
    probs = np.clip(centre + rng.normal(0, 0.05, 400) + 0.01 * labels, 0.001, 0.999)
    c = choose_threshold(probs, labels)
    assert c.threshold - c.uncertain_band >= 0.01 - 1e-9
    assert c.threshold + c.uncertain_band <= 0.99 + 1e-9
    ScoringConfig(threshold=c.threshold, uncertain_band=c.uncertain_band)
