from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from ensemble.calibration import (
    Combiner,
    EnsembleCalibration,
    EnsembleCalibrationError,
    logit,
    read_calibration,
    write_calibration,
)
from ensemble.config import AnalysisConfig
from ensemble.evaluation import roc_auc
from ensemble.faces import FaceDetector
from ensemble.pipeline import analyze
from ensemble.training.calibrate import (
    MIN_TEMPERATURE,
    CalibrationError,
    fit_platt,
    fit_weighted_platt,
)
from ensemble.training.data import DatasetError
from ensemble.training.ensemble_fit import fit_ensemble, folds, read_scores
from tests import media_factory as mf


def _cal(**kw: object) -> EnsembleCalibration:
    args: dict[str, object] = {"members": {"a": "sha-a", "b": "sha-b"}, "slope": 2.0, "bias": 0.5}
    args.update(kw)
    return EnsembleCalibration(**args)  # type: ignore[arg-type]


def test_calibration_is_platt_on_the_logit_of_the_mean() -> None:
    cal = _cal()
    a, b = np.array([0.1, 0.5, 0.8]), np.array([0.3, 0.5, 0.6])
    p = (a + b) / 2
    expected = 1 / (1 + np.exp(-(2.0 * np.log(p / (1 - p)) + 0.5)))
    assert cal.method == "platt_on_mean"
    assert cal.apply({"a": a, "b": b}) == pytest.approx(expected)
    # Monotone in the mean: the ranking (and so AUC) never changes.
    q = np.linspace(0.01, 0.99, 50)
    assert np.all(np.diff(cal.apply({"a": q, "b": q})) > 0)
    # Extreme means stay finite.
    assert np.isfinite(cal.apply({"a": np.array([0.0, 1.0]), "b": np.array([0.0, 1.0])})).all()
    with pytest.raises(ValueError, match="no probabilities for b"):
        cal.apply({"a": a})


def test_weighted_calibration_is_platt_on_a_weighted_mean_of_logits() -> None:
    cal = _cal(member_weights={"a": 0.75, "b": 0.25})
    assert cal.method == "platt_on_weighted_logits"
    a, b = np.array([0.1, 0.5, 0.8]), np.array([0.3, 0.5, 0.6])
    x = 0.75 * np.log(a / (1 - a)) + 0.25 * np.log(b / (1 - b))
    assert cal.apply({"a": a, "b": b}) == pytest.approx(1 / (1 + np.exp(-(2.0 * x + 0.5))))
    # A member with weight 0 changes nothing.
    only_a = _cal(member_weights={"a": 1.0, "b": 0.0})
    assert only_a.apply({"a": a, "b": b}) == pytest.approx(only_a.apply({"a": a, "b": 1 - b}))
    with pytest.raises(ValueError, match="exactly the calibrated members"):
        _cal(member_weights={"a": 1.0})
    with pytest.raises(ValueError, match="not negative"):
        _cal(member_weights={"a": 1.5, "b": -0.5})
    with pytest.raises(ValueError, match="sum to 1"):
        _cal(member_weights={"a": 0.5, "b": 0.6})


def test_calibration_refuses_a_reversing_or_infinite_map() -> None:
    with pytest.raises(ValueError, match="slope must be positive"):
        _cal(slope=-1.0)
    with pytest.raises(ValueError, match="bias finite"):
        _cal(bias=float("nan"))
    with pytest.raises(ValueError, match="at least one member"):
        _cal(members={})


def test_mismatch_names_the_members_or_the_weights_that_differ() -> None:
    cal = _cal()
    assert cal.mismatch({"a": "sha-a", "b": "sha-b"}) is None
    assert "not a" in str(cal.mismatch({"a": "sha-a"}))
    assert cal.mismatch({"a": "sha-a", "b": "other"}) == "fitted for other weights of b"
    # Models without a weights hash (tests) never match a fitted calibration.
    assert cal.mismatch({"a": None, "b": "sha-b"}) == "fitted for other weights of a"


def test_mismatch_names_a_member_whose_temperature_changed() -> None:
    """A re-export of the same checkpoint keeps the weights' hash but may
    change the temperature, and with it every calibrated logit."""
    installed = {"a": "sha-a", "b": "sha-b"}
    cal = _cal(temperatures={"a": 1.0, "b": 0.8})
    assert cal.mismatch(installed, {"a": 1.0, "b": 0.8}) is None
    assert cal.mismatch(installed, {"a": 1.0, "b": 0.7}) == "fitted with another temperature of b"
    assert cal.mismatch(installed) is None  # temperatures unknown: the hash decides
    assert _cal().mismatch(installed, {"a": 1.0, "b": 0.7}) is None  # a file from before
    again = EnsembleCalibration.from_dict(cal.to_dict(), "test")
    assert again.temperatures == {"a": 1.0, "b": 0.8}
    skipped = Combiner.for_members(cal, installed, {"a": 1.0, "b": 0.7})
    assert skipped.calibration is None
    assert skipped.describe()["calibration_not_applied"] == "fitted with another temperature of b"


def test_mismatch_names_a_member_that_prepares_faces_otherwise() -> None:
    from ensemble.calibration import input_record

    installed = {"a": "sha-a", "b": "sha-b"}
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    crop = {"kind": "square", "margin": 0.048, "shift": -0.058}
    fitted = {"a": input_record(224, None, mean, std), "b": input_record(224, crop, mean, std)}
    cal = _cal(inputs=fitted)
    again = EnsembleCalibration.from_dict(json.loads(json.dumps(cal.to_dict())), "test")
    assert again == cal
    assert cal.mismatch(installed, inputs=dict(fitted)) is None
    now = {**fitted, "a": input_record(380, None, mean, std)}
    assert cal.mismatch(installed, inputs=now) == (
        "fitted on faces prepared otherwise (input size, crop or normalisation) for a"
    )
    now = {**fitted, "b": input_record(224, None, mean, std)}
    assert "for b" in str(Combiner.for_members(cal, installed, inputs=now).skipped)
    assert cal.mismatch(installed) is None  # unknown: the hash decides
    assert _cal().mismatch(installed, inputs=now) is None  # a file from before
    assert "inputs" not in _cal().to_dict()
    broken = {**cal.to_dict(), "inputs": {"a": 224}}
    with pytest.raises(EnsembleCalibrationError, match="inputs must map member names"):
        EnsembleCalibration.from_dict(broken, "test")


def test_mismatch_names_a_member_whose_calibration_bias_changed() -> None:
    """A member recalibrated (calibrate_member) or re-exported with a bias
    keeps its weights' hash, but its calibrated logits all move by the bias."""
    installed = {"a": "sha-a", "b": "sha-b"}
    cal = _cal(member_biases={"a": 0.0, "b": -0.4})
    assert cal.mismatch(installed, biases={"a": 0.0, "b": -0.4}) is None
    assert cal.mismatch(installed, biases={"a": 0.0, "b": 0.0}) == (
        "fitted with another calibration bias of b"
    )
    assert cal.mismatch(installed) is None  # biases unknown: the hash decides
    # A file from before members had a bias was fitted with every bias 0.
    assert _cal().mismatch(installed, biases={"a": 0.0, "b": 0.0}) is None
    assert _cal().mismatch(installed, biases={"a": 0.3, "b": 0.0}) == (
        "fitted with another calibration bias of a"
    )
    again = EnsembleCalibration.from_dict(cal.to_dict(), "test")
    assert again == cal and again.member_biases == {"a": 0.0, "b": -0.4}
    assert "member_biases" not in _cal().to_dict()
    skipped = Combiner.for_members(cal, installed, None, None, {"a": 0.0, "b": 0.1})
    assert skipped.describe()["calibration_not_applied"] == (
        "fitted with another calibration bias of b"
    )
    with pytest.raises(ValueError, match="member biases must be finite"):
        _cal(member_biases={"a": float("nan")})


def test_mismatch_names_a_member_that_scores_faces_otherwise_than_fitted() -> None:
    """A member that averages each face with its mirror image gives other
    logits than one scoring the face as is: the fit is for one of the two."""
    installed = {"a": "sha-a", "b": "sha-b"}
    cal = _cal(mirrored=("b",))
    assert cal.mismatch(installed, mirrored=["b"]) is None
    assert cal.mismatch(installed, mirrored=["b", "elsewhere"]) is None  # not analysing
    assert cal.mismatch(installed, mirrored=[]) == (
        "fitted on faces scored as is and mirrored by b, which now scores them as is only"
    )
    assert cal.mismatch(installed, mirrored=["a", "b"]) == (
        "fitted on faces scored as is only by a, which now scores them mirrored too"
    )
    assert cal.mismatch(installed) is None  # unknown: not checked
    # A file from before members could mirror was fitted on faces as is.
    assert _cal().mismatch(installed, mirrored=[]) is None
    assert "as is only by b" in str(_cal().mismatch(installed, mirrored=["b"]))
    again = EnsembleCalibration.from_dict(cal.to_dict(), "test")
    assert again == cal and cal.to_dict()["mirrored"] == ["b"]
    assert "mirrored" not in _cal().to_dict()
    skipped = Combiner.for_members(cal, installed, None, [])
    assert skipped.calibration is None
    assert "as is only" in skipped.describe()["calibration_not_applied"]
    assert Combiner.for_members(cal, installed, None, ["b"]).calibration == cal
    with pytest.raises(ValueError, match="mirrored members must be calibrated members"):
        _cal(mirrored=("c",))
    with pytest.raises(EnsembleCalibrationError, match="list of member names"):
        EnsembleCalibration.from_dict(cal.to_dict() | {"mirrored": "b"}, "test")


def test_combiner_applies_only_a_matching_calibration() -> None:
    probs = {"a": np.array([0.2, 0.9]), "b": np.array([0.4, 0.7])}
    plain = Combiner.for_members(None, {"a": "sha-a", "b": "sha-b"})
    assert plain(probs) == pytest.approx([0.3, 0.8])
    assert plain.describe() == {"method": "mean"}
    fitted = Combiner.for_members(_cal(), {"a": "sha-a", "b": "sha-b"})
    assert fitted(probs) == pytest.approx(_cal().score(logit([0.3, 0.8])))
    assert fitted.describe() == {"method": "mean, then platt", "slope": 2.0, "bias": 0.5}
    weighted = Combiner.for_members(
        _cal(member_weights={"a": 0.75, "b": 0.25}), {"a": "sha-a", "b": "sha-b"}
    )
    x = 0.75 * logit([0.2, 0.9]) + 0.25 * logit([0.4, 0.7])
    assert weighted(probs) == pytest.approx(_cal().score(x))
    assert weighted.describe() == {
        "method": "weighted mean of logits, then platt",
        "weights": {"a": 0.75, "b": 0.25},
        "slope": 2.0,
        "bias": 0.5,
    }
    stale = Combiner.for_members(_cal(), {"a": "new", "b": "sha-b"})
    assert stale(probs) == pytest.approx([0.3, 0.8])
    assert stale.describe()["calibration_not_applied"] == "fitted for other weights of a"


def test_calibration_file_round_trips_and_bad_files_are_refused(tmp_path: Path) -> None:
    assert read_calibration(tmp_path) is None
    cal = _cal(metrics={"n": 10}, provenance={"data": "val"})
    path = write_calibration(tmp_path, cal)
    assert path == tmp_path / "ensemble.json"
    assert read_calibration(tmp_path) == cal
    path.write_text("{not json")
    with pytest.raises(EnsembleCalibrationError, match="cannot be read"):
        read_calibration(tmp_path)
    data = cal.to_dict()
    data["slope"] = 0
    path.write_text(json.dumps(data))
    with pytest.raises(EnsembleCalibrationError, match="not a valid ensemble calibration"):
        read_calibration(tmp_path)
    data = cal.to_dict()
    data["method"] = "stacking"
    path.write_text(json.dumps(data))
    with pytest.raises(EnsembleCalibrationError, match="unknown method"):
        read_calibration(tmp_path)
    weighted = _cal(member_weights={"a": 0.25, "b": 0.75})
    write_calibration(tmp_path, weighted)
    assert read_calibration(tmp_path) == weighted
    assert json.loads(path.read_text())["method"] == "platt_on_weighted_logits"
    data = weighted.to_dict()
    del data["member_weights"]
    path.write_text(json.dumps(data))
    with pytest.raises(EnsembleCalibrationError, match="needs weights"):
        read_calibration(tmp_path)


def test_fit_platt_recovers_the_generating_map() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2, 20_000)
    y = (rng.random(len(x)) < 1 / (1 + np.exp(-(0.6 * x - 0.3)))).astype(float)
    slope, bias = fit_platt(x, y)
    assert slope == pytest.approx(0.6, abs=0.03) and bias == pytest.approx(-0.3, abs=0.05)
    with pytest.raises(CalibrationError, match="both real and fake"):
        fit_platt(x[:10], np.zeros(10))
    with pytest.raises(CalibrationError, match="NaN"):
        fit_platt([0.0, float("nan")], [0, 1])


def _scores_csv(
    path: Path,
    members: dict[str, np.ndarray],
    labels: np.ndarray,
    mirrored: dict[str, list[int]] | None = None,
) -> Path:
    fields = ["file", "label", "group"]
    for m in members:
        fields += [f"logit:{m}", f"prob:{m}", f"weights:{m}"]
    fields += [f"mirrored:{m}" for m in mirrored or {}]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for i, y in enumerate(labels):
            row: dict[str, object] = {"file": f"c{i}.jpg", "label": int(y), "group": f"v{i // 2}"}
            for m, p in members.items():
                row |= {f"logit:{m}": logit(p[i]), f"prob:{m}": p[i], f"weights:{m}": f"sha-{m}"}
            for m, flags in (mirrored or {}).items():
                row[f"mirrored:{m}"] = flags[i]
            w.writerow(row)
    return path


def test_fit_ensemble_on_under_confident_members_improves_log_loss(tmp_path: Path) -> None:
    # Two members that rank well but are pulled towards 0.5, as a mean is.
    rng = np.random.default_rng(1)
    n = 2000
    y = (rng.random(n) < 0.5).astype(float)
    signal = np.where(y == 1, 1.0, -1.0)
    pa = 1 / (1 + np.exp(-(0.5 * signal + rng.normal(0, 0.5, n))))
    pb = 1 / (1 + np.exp(-(0.5 * signal + rng.normal(0, 0.5, n))))
    # Written in two tables, as evaluate --scores per member would.
    table = read_scores(
        [
            _scores_csv(tmp_path / "a.csv", {"a": pa}, y),
            _scores_csv(tmp_path / "b.csv", {"b": pb}, y),
        ]
    )
    assert table.weights == {"a": "sha-a", "b": "sha-b"}
    fit = fit_ensemble(table, ["a", "b"], {"data": "toy"}, method="platt_on_mean")
    assert fit.calibration.slope > 1.5  # sharpened
    assert fit.cross_validated["log_loss"] < fit.before["log_loss"] - 0.05
    assert fit.cross_validated["ece"] < fit.before["ece"]
    assert fit.in_sample["auc"] == pytest.approx(fit.before["auc"])
    assert fit.calibration.metrics["folds"] == 5
    assert fit.calibration.members == {"a": "sha-a", "b": "sha-b"}


def test_fit_weighted_platt_recovers_the_generating_weights() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(0, 2, (20_000, 3))
    z = 1.6 * (0.7 * x[:, 0] + 0.3 * x[:, 1]) - 0.2  # the third member is noise
    y = (rng.random(len(z)) < 1 / (1 + np.exp(-z))).astype(float)
    weights, slope, bias = fit_weighted_platt(x, y)
    assert weights == pytest.approx((0.7, 0.3, 0.0), abs=0.03)
    assert slope == pytest.approx(1.6, abs=0.08) and bias == pytest.approx(-0.2, abs=0.05)
    with pytest.raises(CalibrationError, match="score matrix"):
        fit_weighted_platt(x[:, 0], y)
    with pytest.raises(CalibrationError, match="both real and fake"):
        fit_weighted_platt(x[:10], np.zeros(10))


def test_weighted_fit_lets_the_stronger_member_count_more(tmp_path: Path) -> None:
    # One member sees the label clearly, the other barely: the plain mean
    # ranks below the strong member alone; the weighted fit should not.
    rng = np.random.default_rng(3)
    n = 3000
    y = (rng.random(n) < 0.5).astype(float)
    signal = np.where(y == 1, 1.0, -1.0)
    strong = 1 / (1 + np.exp(-(1.5 * signal + rng.normal(0, 1.0, n))))
    weak = 1 / (1 + np.exp(-(0.2 * signal + rng.normal(0, 1.5, n))))
    table = read_scores([_scores_csv(tmp_path / "s.csv", {"a": strong, "b": weak}, y)])
    fit = fit_ensemble(table, ["a", "b"])
    weights = fit.calibration.member_weights
    assert weights is not None and weights["a"] > 0.7 > weights["b"]
    alone = roc_auc(strong, y)
    assert fit.before["auc"] < alone  # the plain mean is dragged down
    assert fit.cross_validated["auc"] > fit.before["auc"]
    assert fit.cross_validated["auc"] >= alone - 0.005
    assert fit.cross_validated["log_loss"] < fit.before["log_loss"]
    with pytest.raises(ValueError, match="unknown ensemble method"):
        fit_ensemble(table, ["a", "b"], method="stacking")


def test_folds_keep_a_group_together_and_are_stable() -> None:
    groups = ["v1", "v1", "v2", "v3", "v2"]
    f = folds(groups)
    assert f[0] == f[1] and f[2] == f[4]
    # The same folds in every process (a hash of the name, not Python's hash()).
    assert [int(k) for k in f] == [1, 1, 4, 3, 4]


def test_read_scores_refuses_tables_that_do_not_line_up(tmp_path: Path) -> None:
    y = np.array([0, 1, 0, 1], float)
    p = np.array([0.2, 0.7, 0.3, 0.6])
    a = _scores_csv(tmp_path / "a.csv", {"a": p}, y)
    with pytest.raises(DatasetError, match="other crops"):
        read_scores([a, _scores_csv(tmp_path / "b.csv", {"b": p[:3]}, y[:3])])
    with pytest.raises(DatasetError, match="labels crops differently"):
        read_scores([a, _scores_csv(tmp_path / "c.csv", {"c": p}, 1 - y)])
    with pytest.raises(DatasetError, match="more than one table"):
        read_scores([a, _scores_csv(tmp_path / "d.csv", {"a": p}, y)])
    (tmp_path / "e.csv").write_text("file,score\nx.jpg,0.5\n")
    with pytest.raises(DatasetError, match="not a scores CSV"):
        read_scores([tmp_path / "e.csv"])
    with pytest.raises(DatasetError, match="no scores for b"):
        fit_ensemble(read_scores([a]), ["a", "b"])


def test_read_scores_knows_which_members_scored_mirrored_too(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    y = np.tile([0.0, 1.0], 20)
    p = {m: np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 40), 0.01, 0.99) for m in "ab"}
    plain = read_scores([_scores_csv(tmp_path / "a.csv", p, y)])  # a table from before
    assert plain.mirrored == frozenset()
    table = read_scores([_scores_csv(tmp_path / "b.csv", p, y, {"a": [0] * 40, "b": [1] * 40})])
    assert table.mirrored == {"b"}
    fit = fit_ensemble(table, ["a", "b"])
    assert fit.calibration.mirrored == ("b",)
    assert fit_ensemble(table, ["a"]).calibration.mirrored == ()
    mixed = _scores_csv(tmp_path / "c.csv", p, y, {"b": [0] * 39 + [1]})
    with pytest.raises(DatasetError, match="mirrored:b must be 0 or 1 on every row"):
        read_scores([mixed])
    wrong = _scores_csv(tmp_path / "d.csv", p, y, {"b": [2] * 40})
    with pytest.raises(DatasetError, match="mixes or misspells how b scored"):
        read_scores([wrong])


def test_pipeline_scores_faces_with_the_combiner(
    tmp_path: Path, detector: FaceDetector, tiny_member
) -> None:
    path = mf.write_image(tmp_path / "face.png", mf.face_image(256), "PNG")
    members = {"a": tiny_member("a", logit=1.0), "b": tiny_member("b", logit=-0.5)}
    config = AnalysisConfig(members=("a", "b"), frames=4)
    cal = EnsembleCalibration(
        {"a": str(members["a"].weights_sha256), "b": str(members["b"].weights_sha256)}, 1.8, 0.4
    )
    combiner = Combiner(cal)
    result = analyze(path, config, members=members, detector=detector, combiner=combiner)
    face = result.faces[0]
    mean = np.mean(list(face.members.values()))
    assert face.score == pytest.approx(float(cal.score(logit([mean]))[0]))
    assert result.score == pytest.approx(face.score)
    assert result.to_dict()["combination"]["method"] == "mean, then platt"
    # Without one, the plain mean, and the result says so.
    plain = analyze(path, config, members=members, detector=detector)
    assert plain.faces[0].score == pytest.approx(mean)
    assert plain.to_dict()["combination"] == {"method": "mean"}
    assert {m["backend"] for m in plain.to_dict()["models"]} <= {"torch", "onnxruntime", "openvino"}
    assert [m["mirrored"] for m in plain.to_dict()["models"]] == [False, False]


def test_pipeline_scores_a_mirroring_members_faces_as_is_and_mirrored(
    tmp_path: Path, detector: FaceDetector, tiny_member
) -> None:
    from ensemble.pipeline import analyze_with_data
    from ensemble.scoring import calibrate

    path = mf.write_image(tmp_path / "face.png", mf.face_image(256), "PNG")
    config = AnalysisConfig(members=("a",), frames=4, mirror=("a",))
    member = tiny_member("a", mirror=True)
    result, data = analyze_with_data(path, config, members={"a": member}, detector=detector)
    crops = data.crops["a"]
    as_is = member.infer(crops, 8).tapped_logits
    mirrors = [np.ascontiguousarray(c[:, ::-1]) for c in crops]
    both = (as_is + member.infer(mirrors, 8).tapped_logits) / 2
    assert not np.allclose(both, as_is)
    assert [f.members["a"] for f in result.faces] == pytest.approx(calibrate(both, 1.0))
    # The explanations replay the pass as is.
    np.testing.assert_array_equal(data.logits["a"], as_is)
    assert result.to_dict()["models"][0]["mirrored"] is True


def test_a_separable_set_gets_the_bias_of_the_bounded_slope() -> None:
    # Fakes above 3, reals below: the unbounded optimum has an ever larger
    # slope; the slope stops at its bound and the bias must put the boundary
    # between the classes, not where the unbounded fit's bias would.
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.uniform(1.0, 2.9, 500), rng.uniform(3.1, 5.0, 500)])
    y = np.repeat([0.0, 1.0], 500)
    slope, bias = fit_platt(x, y)
    assert slope <= 1 / MIN_TEMPERATURE and slope == pytest.approx(1 / MIN_TEMPERATURE, rel=0.05)
    assert -bias / slope == pytest.approx(3.0, abs=0.1)
    _, wslope, wbias = fit_weighted_platt(np.stack([x, x], axis=1), y)
    assert wslope <= 1 / MIN_TEMPERATURE
    assert wslope == pytest.approx(1 / MIN_TEMPERATURE, rel=0.05)
    assert -wbias / wslope == pytest.approx(3.0, abs=0.1)
