"""Per-frame charts (images and JSON series) and the index."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from ensemble.media import MediaInfo
from ensemble.results import AnalysisResult, FaceResult, FrameInfo, PersonResult
from explain.charts import chart_size, render_png, render_svg, score_figure, score_series
from explain.config import ExplainConfig
from explain.index import Artifact, ExplanationIndex


def _result() -> AnalysisResult:
    frames = tuple(FrameInfo(pos, pos * 10, pos * 0.4, 2) for pos in range(4))
    faces = []
    for pos in range(4):
        for person, base in ((0, 0.2), (1, 0.7)):
            members = {"m1": base + 0.05 * pos, "m2": base}
            score = sum(members.values()) / 2
            kps = ((0.0, 0.0),) * 6
            faces.append(FaceResult(pos, person, (0, 0, 10, 10), 0.9, kps, members, score))
    persons = tuple(
        PersonResult(p, (0, 1, 2, 3), {"m1": 0.5, "m2": 0.5}, 0.5, "uncertain") for p in (0, 1)
    )
    return AnalysisResult(
        file="x.mp4",
        status="done",
        frames=frames,
        faces=tuple(faces),
        persons=persons,
        threshold=0.5,
        uncertain_band=0.1,
        score=0.7,
        verdict="fake",
    )


def test_series_match_the_analysis_face_by_face() -> None:
    result = _result()
    series = score_series(result)
    assert series["threshold"] == 0.5 and series["uncertain_band"] == 0.1
    assert [p["id"] for p in series["persons"]] == [0, 1]
    rows = {(r["person"], r["frame"]): r for r in result.frame_rows()}
    for person in series["persons"]:
        assert [pt["frame"] for pt in person["points"]] == [0, 10, 20, 30]
        for pt in person["points"]:
            row = rows[(person["id"], pt["frame"])]
            assert pt["score"] == row["score"] and pt["members"] == row["members"]
            assert pt["time"] == row["time"]
    json.dumps(series)  # serialisable as is


@pytest.mark.parametrize("members", [["m1", "m2"], ["m1"]])
def test_chart_png_decodes_at_the_expected_size(members) -> None:
    config = ExplainConfig(chart_width_px=640, chart_panel_height_px=150, chart_dpi=80)
    fig = score_figure(score_series(_result()), members, config)
    image = Image.open(io.BytesIO(render_png(fig)))
    image.load()
    assert image.format == "PNG"
    assert image.size == chart_size(members, config) == (640, 150 * (len(members) + 1))


@pytest.mark.parametrize(
    "combination,title",
    [
        ({}, "Ensemble (mean of the members)"),
        (
            {"method": "weighted mean of logits, then platt", "weights": {"m1": 0.7, "m2": 0.3}},
            "Ensemble (weighted combination of the members, calibrated)",
        ),
    ],
)
def test_the_ensemble_panel_names_how_the_members_were_combined(combination, title) -> None:
    from dataclasses import replace

    series = score_series(replace(_result(), combination=combination))
    fig = score_figure(series, ["m1", "m2"], ExplainConfig())
    assert fig.axes[0].get_title(loc="left") == title
    assert fig.axes[1].get_title(loc="left") == "Member m1"


def test_chart_svg_is_an_svg_of_the_same_size() -> None:
    config = ExplainConfig(chart_width_px=640, chart_panel_height_px=150, chart_dpi=80)
    svg = render_svg(score_figure(score_series(_result()), ["m1", "m2"], config)).decode()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    # 640 x 450 px at 80 dpi = 8 x 5.625 in = 576 x 405 pt.
    assert 'width="576pt"' in svg and 'height="405pt"' in svg


def test_chart_module_never_imports_pyplot() -> None:
    import ast

    import explain.charts as charts

    tree = ast.parse(Path(charts.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {
        f"{n.module}.{a.name}"
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module
        for a in n.names
    }
    assert not any("pyplot" in name for name in imported)


def test_index_round_trips_through_index_json(tmp_path: Path) -> None:
    art = Artifact(
        "gradcam",
        "gradcam/m1/p0_f000010.jpg",
        10,
        0.4,
        0,
        "m1",
        "where the model looked",
        320,
        240,
        "image/jpeg",
    )
    index = ExplanationIndex((art,), score_series(_result()))
    path = index.write(tmp_path)
    data = json.loads(path.read_text())
    assert data["version"] == 2 and set(data) == {"version", "artifacts", "series"}
    assert set(data["artifacts"][0]) == {
        "kind",
        "path",
        "frame",
        "time",
        "person",
        "member",
        "caption",
        "width",
        "height",
        "media_type",
    }
    assert ExplanationIndex.read(tmp_path) == index


def test_artifact_paths_must_stay_inside_the_folder() -> None:
    with pytest.raises(ValueError, match="relative"):
        Artifact("chart", "../x.png", None, None, None, None, "", 1, 1, "image/png")
    with pytest.raises(ValueError, match="unknown artifact kind"):
        Artifact("proof", "x.png", None, None, None, None, "", 1, 1, "image/png")  # type: ignore[arg-type]


def test_config_refuses_nonsense_with_reasons() -> None:
    with pytest.raises(ValueError, match="top_k"):
        ExplainConfig(top_k=0)
    with pytest.raises(ValueError, match="unknown artifact kinds"):
        ExplainConfig(kinds=("gradcam", "xray"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="quality"):
        ExplainConfig(quality=101)


def test_series_boxes_are_fractions_of_the_analyzed_frame() -> None:
    # A 6400x6000 video analysed from frames downscaled to 2974x2788 while
    # decoding: its face boxes are in the small frames' pixels.
    media = MediaInfo(
        kind="video",
        format="mkv",
        width=6400,
        height=6000,
        size_bytes=1,
        sha256="0",
        decoded_width=2974,
        decoded_height=2788,
    )
    result = dataclasses.replace(_result(), media=media)
    box = score_series(result)["persons"][0]["points"][0]["box"]
    assert box == [0.0, 0.0, round(10 / 2974, 4), round(10 / 2788, 4)]
