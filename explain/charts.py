"""Per-frame score charts: the JSON series, and a PNG/SVG made with
matplotlib's object API (``Figure``, never ``pyplot``: no global state, safe
in a server)."""

from __future__ import annotations

import io
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ensemble.results import AnalysisResult
from explain.config import ExplainConfig

BAND_COLOUR = "#f2c14e"
THRESHOLD_COLOUR = "#c0392b"
BAND_ALPHA = 0.25
ENSEMBLE_PANEL = "ensemble"
# Fixed margins (pixels) instead of matplotlib's constrained layout, which
# costs about as much as drawing the chart, twice (PNG and SVG).
MARGIN_LEFT_PX = 60
MARGIN_RIGHT_PX = 15
MARGIN_TOP_PX = 24
MARGIN_BOTTOM_PX = 44
PANEL_GAP = 0.35  # share of a panel's height between panels (room for titles)


def score_series(result: AnalysisResult) -> dict[str, Any]:
    """The chart data: per person, one point per sampled frame where the
    person was seen, with the ensemble score, each member's and (when the
    frame size is known) the face box as fractions of the frame."""
    frames = {f.position: f for f in result.frames}
    persons: dict[int, list[dict[str, Any]]] = {p.id: [] for p in result.persons}
    for face in sorted(result.faces, key=lambda f: (f.person, f.position)):
        frame = frames[face.position]
        point: dict[str, Any] = {
            "frame": frame.index,
            "time": round(frame.time_s, 4),
            "score": face.score,
            "members": dict(face.members),
        }
        if result.media is not None and result.media.width and result.media.height:
            # Boxes are in the analysed frames' pixels (smaller than the
            # source's when a huge video frame was downscaled while decoding).
            w, h = result.media.frame_size
            x0, y0, x1, y1 = face.box
            point["box"] = [round(x0 / w, 4), round(y0 / h, 4), round(x1 / w, 4), round(y1 / h, 4)]
        persons.setdefault(face.person, []).append(point)
    return {
        "threshold": result.threshold,
        "uncertain_band": result.uncertain_band,
        # How the members became the ensemble's score (Combiner.describe()).
        "combination": result.combination.get("method", "mean"),
        "persons": [{"id": pid, "points": points} for pid, points in persons.items()],
    }


# How the ensemble panel names the combination (Combiner.describe()["method"]).
COMBINATION_TITLES = {
    "mean": "mean of the members",
    "mean, then platt": "mean of the members, calibrated",
    "weighted mean of logits, then platt": "weighted combination of the members, calibrated",
}


def _panel(ax: Axes, title: str, series: dict[str, Any], member: str | None) -> None:
    threshold = series["threshold"]
    band = series["uncertain_band"] or 0.0
    if threshold is not None:
        if band:
            ax.axhspan(
                threshold - band,
                threshold + band,
                color=BAND_COLOUR,
                alpha=BAND_ALPHA,
                label="uncertain",
            )
        ax.axhline(
            threshold, color=THRESHOLD_COLOUR, linestyle="--", linewidth=1, label="threshold"
        )
    for person in series["persons"]:
        times = [p["time"] for p in person["points"]]
        scores = [p["score"] if member is None else p["members"][member] for p in person["points"]]
        ax.plot(
            times, scores, marker="o", markersize=3, linewidth=1.5, label=f"person {person['id']}"
        )
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("P(fake)")
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(alpha=0.3)


def score_figure(series: dict[str, Any], members: list[str], config: ExplainConfig) -> Figure:
    """The ensemble's and each member's score against time, one panel each."""
    panels = [ENSEMBLE_PANEL, *members]
    dpi = config.chart_dpi
    fig = Figure(
        figsize=(
            config.chart_width_px / dpi,
            config.chart_panel_height_px * len(panels) / dpi,
        ),
        dpi=dpi,
    )
    width, height = chart_size(members, config)
    fig.subplots_adjust(
        left=MARGIN_LEFT_PX / width,
        right=1 - MARGIN_RIGHT_PX / width,
        top=1 - MARGIN_TOP_PX / height,
        bottom=MARGIN_BOTTOM_PX / height,
        hspace=PANEL_GAP,
    )
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name in zip(axes, panels, strict=True):
        member = None if name == ENSEMBLE_PANEL else name
        title = (
            f"Ensemble ({COMBINATION_TITLES.get(series.get('combination', 'mean'), 'combined')})"
            if member is None
            else f"Member {name}"
        )
        _panel(ax, title, series, member)
    axes[0].legend(loc="upper right", fontsize=8, ncols=4)
    axes[-1].set_xlabel("time (s)")
    return fig


def chart_size(members: list[str], config: ExplainConfig) -> tuple[int, int]:
    """Width and height in pixels of the rendered chart."""
    return config.chart_width_px, config.chart_panel_height_px * (len(members) + 1)


def render_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def render_svg(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg")
    return buf.getvalue()
