"""Accuracy metrics and report figures for binary fake/real scores.

Pure: numpy and matplotlib only (figures are ``matplotlib.figure.Figure``
objects rendered with the Agg canvas, never pyplot). Label 1 means fake.

The metrics are the seeds' set: ROC AUC, log loss, accuracy, precision,
recall, F1 and the confusion matrix ``[[tn, fp], [fn, tp]]`` at a threshold,
plus the expected calibration error (ECE, ``ECE_BINS`` equal-width bins over
the fake probability; see :func:`expected_calibration_error`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ensemble.errors import TrusttraceError

if TYPE_CHECKING:
    # matplotlib is imported where a figure is drawn, not with the module.
    from matplotlib.figure import Figure

FloatArray = npt.NDArray[np.float64]

# Probabilities are clipped this far from 0 and 1 before the log loss, so a
# single confident mistake costs about 34.5 nats instead of infinity.
LOG_LOSS_EPS = 1e-15
FIGURE_DPI = 100
# Equal-width bins over the fake probability for the ECE and the reliability
# diagram: [0, 1/15), [1/15, 2/15), ..., [14/15, 1] (the last bin closed).
ECE_BINS = 15
# Extra room on the reliability diagram's y axis beyond [0, 1].
RELIABILITY_MARGIN = 0.03
# save_figure writes these formats, chosen by the file's suffix.
FIGURE_FORMATS = {".png": "png", ".svg": "svg"}
# write_report_figures writes the ROC and reliability figures in these formats.
REPORT_FIGURE_SUFFIXES = (".png", ".svg")


class MetricsError(TrusttraceError, ValueError):
    """Scores and labels that no metric can be computed from."""


def _arrays(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if s.shape != y.shape:
        raise MetricsError(f"{len(s)} scores but {len(y)} labels")
    if len(s) == 0:
        raise MetricsError("no samples to evaluate")
    if not np.all((y == 0) | (y == 1)):
        raise MetricsError("labels must be 0 (real) or 1 (fake)")
    if not np.all(np.isfinite(s)):
        raise MetricsError("scores contain NaN or infinity")
    return s, y


def roc_auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with ties counted half);
    ``None`` when only one class is present."""
    s, y = _arrays(scores, labels)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # Average ranks over ties.
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    s, y = _arrays(scores, labels)
    n_pos = max(y.sum(), 1.0)
    n_neg = max(len(y) - y.sum(), 1.0)
    thresholds = np.unique(s)[::-1]
    fpr = [0.0]
    tpr = [0.0]
    for t in thresholds:
        pred = s >= t
        tpr.append(float((pred & (y == 1)).sum() / n_pos))
        fpr.append(float((pred & (y == 0)).sum() / n_neg))
    return np.asarray(fpr), np.asarray(tpr)


def log_loss(probs: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Mean binary cross-entropy of probabilities (clipped by ``LOG_LOSS_EPS``)."""
    p, y = _arrays(probs, labels)
    if np.any((p < 0) | (p > 1)):
        raise MetricsError("log loss needs probabilities in [0, 1]")
    p = np.clip(p, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


@dataclass(frozen=True)
class ReliabilityBins:
    """Fake probabilities grouped into equal-width bins.

    ``edges`` has ``n_bins + 1`` entries ``k / n_bins``; bin ``k`` holds the
    probabilities in ``[edges[k], edges[k + 1])``, the last bin also 1.0.
    ``mean_predicted`` and ``observed_rate`` (the share of fakes) are NaN for
    empty bins.
    """

    edges: FloatArray
    counts: npt.NDArray[np.int64]
    mean_predicted: FloatArray
    observed_rate: FloatArray

    @property
    def n(self) -> int:
        """The number of samples in all bins together."""
        return int(self.counts.sum())

    @property
    def nonempty(self) -> npt.NDArray[np.bool_]:
        """Which bins hold at least one sample."""
        return self.counts > 0


def reliability_bins(
    probs: npt.ArrayLike, labels: npt.ArrayLike, n_bins: int = ECE_BINS
) -> ReliabilityBins:
    """Per-bin counts, mean fake probability and observed fake rate: the data of
    the reliability diagram and of :func:`expected_calibration_error`."""
    p, y = _arrays(probs, labels)
    if np.any((p < 0) | (p > 1)):
        raise MetricsError("calibration needs probabilities in [0, 1]")
    if n_bins < 1:
        raise MetricsError(f"need at least one bin, not {n_bins}")
    # k / n is correctly rounded, so a probability written as k / n falls in bin k.
    edges = np.arange(n_bins + 1, dtype=np.float64) / n_bins
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins).astype(np.int64)
    sum_p = np.bincount(index, weights=p, minlength=n_bins)
    sum_y = np.bincount(index, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.where(counts > 0, sum_p / counts, np.nan)
        observed_rate = np.where(counts > 0, sum_y / counts, np.nan)
    return ReliabilityBins(edges, counts, mean_predicted, observed_rate)


def _ece(bins: ReliabilityBins) -> float:
    full = bins.nonempty
    gaps = np.abs(bins.observed_rate[full] - bins.mean_predicted[full])
    return float(np.sum(bins.counts[full] / bins.n * gaps))


def expected_calibration_error(
    probs: npt.ArrayLike, labels: npt.ArrayLike, n_bins: int = ECE_BINS
) -> float:
    """Expected calibration error of fake probabilities, in [0, 1].

    The binary reliability-diagram definition: the probabilities ``p`` of the
    fake class (not the confidence ``max(p, 1 - p)`` of the predicted class)
    are put into ``n_bins`` equal-width bins (see :func:`reliability_bins`),
    and ECE = sum over non-empty bins of ``(n_b / n) * |mean(y_b) - mean(p_b)|``,
    the gap between the observed fake rate and the mean predicted probability
    weighted by the bin's share of the samples. 0 means perfectly calibrated.
    """
    return _ece(reliability_bins(probs, labels, n_bins))


@dataclass(frozen=True)
class BinaryMetrics:
    auc: float | None
    log_loss: float
    ece: float
    accuracy: float
    precision: float
    recall: float
    f1: float
    confusion: tuple[tuple[int, int], tuple[int, int]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "auc": self.auc,
            "log_loss": self.log_loss,
            "ece": self.ece,
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "confusion": [list(self.confusion[0]), list(self.confusion[1])],
        }


def binary_metrics(
    probs: npt.ArrayLike, labels: npt.ArrayLike, threshold: float = 0.5
) -> BinaryMetrics:
    """All metrics of fake probabilities against labels; a sample is called
    fake when its probability is at or above ``threshold``. Precision (recall)
    with no predicted (actual) fakes is 0; ``ece`` uses ``ECE_BINS`` bins."""
    p, y = _arrays(probs, labels)
    pred = p >= threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    tn = int((~pred & (y == 0)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return BinaryMetrics(
        auc=roc_auc(p, y),
        log_loss=log_loss(p, y),
        ece=expected_calibration_error(p, y),
        accuracy=(tp + tn) / len(y),
        precision=precision,
        recall=recall,
        f1=f1,
        confusion=((tn, fp), (fn, tp)),
    )


def report(
    member_probs: Mapping[str, npt.ArrayLike],
    labels: npt.ArrayLike,
    threshold: float = 0.5,
    ensemble_probs: npt.ArrayLike | None = None,
) -> dict[str, Any]:
    """The evaluation JSON: ``{"ensemble": {...}, "members": {name: {...}},
    "n": {"real", "fake"}}``. The ensemble's probability is
    ``ensemble_probs`` when given (the pipeline's video scores), else the
    mean of the members' (a face's score in :mod:`ensemble.pipeline`)."""
    if not member_probs:
        raise MetricsError("no member scores to evaluate")
    y = np.asarray(labels, dtype=np.float64)
    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in member_probs.values()])
    ens = stacked.mean(axis=0) if ensemble_probs is None else np.asarray(ensemble_probs, np.float64)
    return {
        "ensemble": binary_metrics(ens, y, threshold).to_dict(),
        "members": {
            name: binary_metrics(p, y, threshold).to_dict() for name, p in member_probs.items()
        },
        "n": {"real": int((y == 0).sum()), "fake": int((y == 1).sum())},
    }


# --- Threshold and uncertain band ------------------------------------------

# The uncertain band is widened until the samples outside it are called
# correctly this often ...
BAND_TARGET_ACCURACY = 0.95
# ... but never beyond this, nor beyond what keeps threshold +/- band at
# least BAND_EDGE inside (0, 1) (ScoringConfig refuses a band that leaves no
# room for "fake" or "real").
MAX_BAND = 0.25
BAND_STEP = 0.01
BAND_EDGE = 0.01


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    uncertain_band: float
    youden_j: float
    accuracy_outside_band: float | None
    share_uncertain: float
    target_met: bool


def choose_threshold(probs: npt.ArrayLike, labels: npt.ArrayLike) -> ThresholdChoice:
    """The documented rule (README, "Training and evaluation"):

    1. threshold: the score in [0.05, 0.95] (the scores clipped to it)
       maximising Youden's J = TPR - FPR on validation (ties: the one
       nearest 0.5);
    2. uncertain band: the smallest multiple of 0.01 such that the validation
       samples outside ``[t - b, t + b)`` are classified with accuracy at least
       ``BAND_TARGET_ACCURACY``; at most ``MAX_BAND``, and at most what keeps
       ``t - b`` and ``t + b`` ``BAND_EDGE`` inside (0, 1) (then ``target_met``
       is False). The choice is always a valid ``ScoringConfig``.
    """
    p, y = _arrays(probs, labels)

    def youden(t: float) -> float:
        pred = p >= t
        tpr = (pred & (y == 1)).sum() / max(y.sum(), 1)
        fpr = (pred & (y == 0)).sum() / max((1 - y).sum(), 1)
        return float(tpr - fpr)

    best_t, best_j = 0.5, -np.inf
    # The best threshold inside the allowed range, not the best overall then
    # clipped: an optimum at 0.98 clipped to 0.95 can be far worse than one
    # the range holds.
    for t in np.unique(np.clip(p, 0.05, 0.95)):
        j = youden(float(t))
        if j > best_j + 1e-12 or (abs(j - best_j) <= 1e-12 and abs(t - 0.5) < abs(best_t - 0.5)):
            best_t, best_j = float(t), j
    t = best_t
    widest = round(max(0.0, min(MAX_BAND, t - BAND_EDGE, 1.0 - BAND_EDGE - t)), 4)
    band, acc, met = widest, None, False
    for b in np.arange(0.0, widest + 1e-9, BAND_STEP):
        outside = (p >= t + b) | (p < t - b)
        if not outside.any():
            break
        acc = float(((p[outside] >= t) == (y[outside] == 1)).mean())
        if acc >= BAND_TARGET_ACCURACY:
            band, met = round(float(b), 4), True
            break
    outside = (p >= t + band) | (p < t - band)
    if not met:
        acc = float(((p[outside] >= t) == (y[outside] == 1)).mean()) if outside.any() else None
    return ThresholdChoice(
        threshold=round(t, 4),
        uncertain_band=band,
        youden_j=best_j,
        accuracy_outside_band=acc,
        share_uncertain=float(1.0 - outside.mean()),
        target_met=met,
    )


# --- Figures ----------------------------------------------------------------


def roc_figure(curves: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]], title: str) -> Figure:
    """ROC curves, one per name: ``{name: (scores, labels)}``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), dpi=FIGURE_DPI)
    ax = fig.add_subplot()
    for name, (scores, labels) in curves.items():
        fpr, tpr = roc_curve(scores, labels)
        auc = roc_auc(scores, labels)
        label = f"{name} (AUC {auc:.3f})" if auc is not None else f"{name} (AUC n/a)"
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    return fig


def reliability_figure(
    curves: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]],
    title: str,
    n_bins: int = ECE_BINS,
) -> Figure:
    """Reliability diagram, one curve per name: ``{name: (probs, labels)}``.

    Top: observed fake rate against mean predicted fake probability in each
    non-empty bin, with the diagonal (perfect calibration) and each curve's
    ECE in the legend. Bottom: the number of samples per bin. The numbers are
    those of :func:`reliability_bins`, so they agree with the reported ECE.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 6), dpi=FIGURE_DPI, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="calibrated")
    for name, (probs, labels) in curves.items():
        bins = reliability_bins(probs, labels, n_bins)
        full = bins.nonempty
        line = top.plot(
            bins.mean_predicted[full],
            bins.observed_rate[full],
            marker="o",
            markersize=4,
            label=f"{name} (ECE {_ece(bins):.3f})",
        )[0]
        bottom.stairs(bins.counts, bins.edges, color=line.get_color())
    top.set_xlim(0, 1)
    # A little room above 1 and below 0, so bins with no (or only) fakes show.
    top.set_ylim(-RELIABILITY_MARGIN, 1 + RELIABILITY_MARGIN)
    top.set_ylabel("observed fake rate")
    top.set_title(title)
    top.legend(loc="upper left", fontsize="small")
    bottom.set_xlabel(f"mean predicted fake probability ({n_bins} bins)")
    bottom.set_ylabel("count")
    return fig


def confusion_figure(confusion: Sequence[Sequence[int]], title: str) -> Figure:
    """A 2x2 confusion matrix with counts (rows: true real/fake)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 4), dpi=FIGURE_DPI)
    ax = fig.add_subplot()
    m = np.asarray(confusion, dtype=np.float64)
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(int(v)), ha="center", va="center", color="black")
    ax.set_xticks([0, 1], ["real", "fake"])
    ax.set_yticks([0, 1], ["real", "fake"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Render a Figure without pyplot or a display (Agg canvas): PNG or SVG,
    by the suffix of ``path`` (``FIGURE_FORMATS``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fmt = FIGURE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(FIGURE_FORMATS)
        raise ValueError(f"cannot save a figure as {path.name}: use one of {known}")
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=fmt)
    return path


def write_report_figures(
    member_probs: Mapping[str, npt.ArrayLike],
    labels: npt.ArrayLike,
    result: Mapping[str, Any],
    out_dir: Path,
    ensemble_probs: npt.ArrayLike | None = None,
) -> list[Path]:
    """``roc.png``/``roc.svg`` and ``reliability.png``/``reliability.svg``
    (every member and the ensemble), one ``confusion-<name>.png`` per member
    and ``confusion-ensemble.png``."""
    y = np.asarray(labels, dtype=np.float64)
    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in member_probs.values()])
    curves: dict[str, tuple[npt.ArrayLike, npt.ArrayLike]] = {
        name: (p, y) for name, p in member_probs.items()
    }
    curves["ensemble"] = (stacked.mean(axis=0) if ensemble_probs is None else ensemble_probs, y)
    figures = {
        "roc": roc_figure(curves, "ROC"),
        "reliability": reliability_figure(curves, "Reliability"),
    }
    paths = [
        save_figure(fig, out_dir / f"{stem}{suffix}")
        for stem, fig in figures.items()
        for suffix in REPORT_FIGURE_SUFFIXES
    ]
    paths.append(
        save_figure(
            confusion_figure(result["ensemble"]["confusion"], "ensemble"),
            out_dir / "confusion-ensemble.png",
        )
    )
    for name, metrics in result["members"].items():
        paths.append(
            save_figure(
                confusion_figure(metrics["confusion"], name), out_dir / f"confusion-{name}.png"
            )
        )
    return paths
