from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from django.core.management import CommandError, call_command
from django.test import override_settings

from ensemble.media import file_sha256
from ensemble.weights import read_manifest, save_weights
from tests import media_factory as mf
from tests.tiny_registry import BRIGHTNESS
from tests.training_toys import write_dataset

# Grey levels of the generated crops: reals, then fakes.
REAL_GREYS = (40, 100, 200)
FAKE_GREYS = (220, 180, 60)


@pytest.fixture
def site(tmp_path: Path, blazeface_cache: Path) -> Iterator[Path]:
    from django.conf import settings

    weights = tmp_path / "weights"
    trusttrace = {
        **settings.TRUSTTRACE,
        "REGISTRY": "tests.tiny_registry.REGISTRY",
        "WEIGHTS_DIR": weights,
        "CACHE_DIR": blazeface_cache,
        "MEMBERS": ("bright",),
        "FRAMES": 4,
        # Never the real ~/.cache/trusttrace of the machine running the tests.
        "RUNS_DIR": tmp_path / "runs",
        "CROPS_CACHE_DIR": tmp_path / "crops",
    }
    with override_settings(TRUSTTRACE=trusttrace):
        yield weights


def _grey_dataset(
    root: Path, reals: tuple[int, ...] = REAL_GREYS, fakes: tuple[int, ...] = FAKE_GREYS
) -> Path:
    rows = []
    for label, greys in ((0, reals), (1, fakes)):
        for g in greys:
            rel = f"{'fake' if label else 'real'}/g{g}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / rel), np.full((20, 20, 3), g, np.uint8))
            rows.append((rel, label, "val"))
    with (root / "metadata.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "split"])
        w.writerows(rows)
    return root


def test_evaluate_faces_reports_hand_computed_metrics(site: Path, tmp_path: Path, capsys):
    save_weights(BRIGHTNESS.build().state_dict(), BRIGHTNESS, site, quantization="fp32")
    data = _grey_dataset(tmp_path / "greys")
    out_json = tmp_path / "eval.json"
    call_command(
        "evaluate",
        "--faces",
        str(data),
        "--split",
        "val",
        "--json",
        str(out_json),
        "--out",
        str(tmp_path / "figs"),
    )
    result = json.loads(out_json.read_text())
    assert set(result) == {"ensemble", "members", "n", "combination"}
    assert result["combination"] == {"method": "mean"}  # no weights/ensemble.json
    assert result["n"] == {"real": 3, "fake": 3}
    m = result["members"]["bright"]
    # p = sigmoid(4 (g / 255 - 0.5)): fake at 0.5 when g >= 127.5.
    assert m["confusion"] == [[2, 1], [1, 2]]  # real 200 called fake; fake 60 missed
    assert m["accuracy"] == pytest.approx(4 / 6) and m["f1"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(6 / 9)  # fake > real in 3 + 2 + 1 of 9 pairs

    def p(g: float) -> float:
        return 1 / (1 + math.exp(-4 * (g / 255 - 0.5)))

    expected = -np.mean(
        [math.log(1 - p(g)) for g in REAL_GREYS] + [math.log(p(g)) for g in FAKE_GREYS]
    )
    assert m["log_loss"] == pytest.approx(expected, rel=1e-4)
    # 15 bins of width 1/15: greys 40 (p 0.202, real) and 60 (p 0.258, fake)
    # share [3/15, 4/15); 100 (0.394), 180 (0.695), 200 (0.757) and 220 (0.810)
    # are alone in [5/15, 6/15), [10/15, 11/15), [11/15, 12/15), [12/15, 13/15).
    shared_bin = 2 / 6 * abs(0.5 - (p(40) + p(60)) / 2)
    single_bins = (p(100) + (1 - p(180)) + p(200) + (1 - p(220))) / 6
    expected_ece = shared_bin + single_bins
    assert m["ece"] == pytest.approx(expected_ece, rel=1e-4)
    # One member: the ensemble's score is that member's.
    assert result["ensemble"] == m
    # --out given: the figures go there, not beside the JSON.
    for name in (
        "roc.png",
        "roc.svg",
        "reliability.png",
        "reliability.svg",
        "confusion-bright.png",
        "confusion-ensemble.png",
        "threshold.json",
    ):
        assert (tmp_path / "figs" / name).is_file()
    assert not (tmp_path / "reliability.png").exists()
    assert "bright: AUC 0.6667" in capsys.readouterr().out


def test_evaluate_writes_figures_and_ece_beside_the_json(site: Path, tmp_path: Path, capsys):
    save_weights(BRIGHTNESS.build().state_dict(), BRIGHTNESS, site, quantization="fp32")
    data = _grey_dataset(tmp_path / "greys")
    out_json = tmp_path / "report" / "eval.json"
    call_command("evaluate", "--faces", str(data), "--json", str(out_json))
    result = json.loads(out_json.read_text())
    assert isinstance(result["ensemble"]["ece"], float)
    assert all(isinstance(m["ece"], float) for m in result["members"].values())
    assert 0.0 <= result["members"]["bright"]["ece"] <= 1.0
    for name in ("roc.png", "roc.svg", "reliability.png", "reliability.svg", "threshold.json"):
        assert (out_json.parent / name).is_file(), name
    assert (out_json.parent / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (out_json.parent / "reliability.svg").read_bytes()[:2000]
    captured = capsys.readouterr()
    printed = captured.out
    assert "ECE " in printed and f"figures in {out_json.parent}" in printed
    # Chosen on every split, training crops included: said, in the file too.
    chosen = json.loads((out_json.parent / "threshold.json").read_text())
    assert chosen["chosen_on"] == "faces, every split"
    assert "training crops included" in captured.err
    call_command("evaluate", "--faces", str(data), "--split", "val", "--json", str(out_json))
    captured = capsys.readouterr()
    assert json.loads((out_json.parent / "threshold.json").read_text())["chosen_on"] == (
        "faces, split val"
    )
    assert "training crops included" not in captured.err


def test_evaluate_videos_goes_through_the_pipeline(site: Path, tmp_path: Path):
    save_weights(BRIGHTNESS.build().state_dict(), BRIGHTNESS, site, quantization="fp32")
    videos = tmp_path / "videos"
    videos.mkdir()
    mf.write_clip(videos / "a.mp4", frames=8, face_at=(60, 40, 160))
    mf.write_clip(videos / "b.mp4", frames=8, face_at=(80, 40, 150))
    mf.write_clip(videos / "empty.mp4", frames=6)
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\na.mp4,REAL\nb.mp4,FAKE\nempty.mp4,FAKE\n")
    out_json = tmp_path / "v.json"
    call_command("analyze", str(videos / "a.mp4"), "--json", str(tmp_path / "a.json"))
    call_command(
        "evaluate",
        "--videos",
        str(videos),
        "--labels",
        str(labels),
        "--json",
        str(out_json),
        "--out",
        str(tmp_path / "vf"),
    )
    result = json.loads(out_json.read_text())
    assert result["n"] == {"real": 1, "fake": 1}  # the faceless clip is left out
    assert result["combination"] == {"method": "mean"}  # no weights/ensemble.json
    analyzed = json.loads((tmp_path / "a.json").read_text())["results"][0]
    # Video a is the only real: its pipeline score decides the confusion row.
    called_fake = analyzed["score"] >= 0.5
    assert result["ensemble"]["confusion"][0] == [int(not called_fake), int(called_fake)]
    # Each video analysed gets its row: score, verdict and the members' scores.
    assert [v["file"] for v in result["videos"]] == ["a.mp4", "b.mp4"]
    first = result["videos"][0]
    assert first["label"] == "real" and first["score"] == pytest.approx(analyzed["score"])
    assert first["verdict"] == analyzed["verdict"] and set(first["members"]) == {"bright"}


def test_evaluate_json_to_stdout_is_json_alone(site: Path, tmp_path: Path, capsys):
    save_weights(BRIGHTNESS.build().state_dict(), BRIGHTNESS, site, quantization="fp32")
    data = _grey_dataset(tmp_path / "greys")
    call_command("evaluate", "--faces", str(data), "--json", "-", "--out", str(tmp_path / "f"))
    printed = capsys.readouterr()
    assert set(json.loads(printed.out)) == {"ensemble", "members", "n", "combination"}
    assert "bright: AUC" in printed.err


def test_evaluate_scores_feed_calibrate_ensemble(site: Path, tmp_path: Path, capsys):
    save_weights(BRIGHTNESS.build().state_dict(), BRIGHTNESS, site, quantization="fp32")
    sha = read_manifest(site, "bright").weights_sha256
    # Enough crops for 5 folds: darker ones mostly real, brighter mostly fake.
    data = _grey_dataset(tmp_path / "greys", tuple(range(10, 170, 8)), tuple(range(90, 250, 8)))
    scores = tmp_path / "scores.csv"
    call_command(
        "evaluate",
        "--faces",
        str(data),
        "--json",
        str(tmp_path / "before.json"),
        "--scores",
        str(scores),
    )
    rows = list(csv.DictReader(scores.open()))
    assert len(rows) == 40 and {r["weights:bright"] for r in rows} == {sha}
    assert {r["split"] for r in rows} == {"val"}
    assert {r["label"] for r in rows} == {"0", "1"}
    before = json.loads((tmp_path / "before.json").read_text())
    assert float(rows[0]["prob:bright"]) == pytest.approx(
        1 / (1 + math.exp(-float(rows[0]["logit:bright"])))
    )
    capsys.readouterr()
    call_command("calibrate_ensemble", "--scores", str(scores), "--dry-run")
    assert "cross-validated" in capsys.readouterr().out
    assert not (site / "ensemble.json").exists()  # a dry run writes nothing
    call_command("calibrate_ensemble", "--scores", str(scores), "--method", "mean")
    assert json.loads((site / "ensemble.json").read_text())["method"] == "platt_on_mean"
    call_command("calibrate_ensemble", "--scores", str(scores), "--description", "greys")
    fitted = json.loads((site / "ensemble.json").read_text())
    assert fitted["method"] == "platt_on_weighted_logits"
    assert fitted["members"] == {"bright": sha} and fitted["provenance"]["data"] == "greys"
    assert fitted["metrics"]["before"]["log_loss"] == pytest.approx(before["ensemble"]["log_loss"])
    call_command("evaluate", "--faces", str(data), "--json", str(tmp_path / "after.json"))
    after = json.loads((tmp_path / "after.json").read_text())
    # One member: the weighted mean of logits is its logit, so the ranking holds.
    assert after["combination"]["method"] == "weighted mean of logits, then platt"
    assert after["combination"]["weights"] == {"bright": pytest.approx(1.0)}
    assert after["ensemble"]["auc"] == pytest.approx(before["ensemble"]["auc"])
    assert after["ensemble"]["log_loss"] < before["ensemble"]["log_loss"]  # fitted in-sample
    assert after["members"] == before["members"]  # members are untouched
    assert fitted["temperatures"] == {"bright": 1.0}
    # The same weights re-exported with another temperature: same hash, but the
    # old scores are refused and the old calibration is not applied.
    save_weights(
        BRIGHTNESS.build().state_dict(), BRIGHTNESS, site, quantization="fp32", temperature=0.5
    )
    assert read_manifest(site, "bright").weights_sha256 == sha
    with pytest.raises(CommandError, match="calibrated otherwise than the installed calibration"):
        call_command("calibrate_ensemble", "--scores", str(scores))
    call_command("evaluate", "--faces", str(data), "--json", str(tmp_path / "retuned.json"))
    retuned = json.loads((tmp_path / "retuned.json").read_text())
    assert retuned["combination"] == {
        "method": "mean",
        "calibration_not_applied": "fitted with another temperature of bright",
    }
    # New weights: the old scores are refused, and the old calibration is not applied.
    model = BRIGHTNESS.build()
    with torch.no_grad():
        next(model.parameters()).add_(0.5)
    save_weights(model.state_dict(), BRIGHTNESS, site, quantization="fp32")
    with pytest.raises(CommandError, match="run evaluate --scores again"):
        call_command("calibrate_ensemble", "--scores", str(scores))
    call_command("evaluate", "--faces", str(data), "--json", str(tmp_path / "stale.json"))
    stale = json.loads((tmp_path / "stale.json").read_text())
    assert stale["combination"] == {
        "method": "mean",
        "calibration_not_applied": "fitted for other weights of bright",
    }


def test_an_ensemble_fit_is_not_applied_once_a_member_prepares_faces_otherwise(
    site: Path, tmp_path: Path
):
    """Imported again with another --input-size, or exported again with
    another --crop, a member keeps its weights' hash, temperature and bias,
    but its scores change: the old fit was applied to them."""
    from ensemble.crops import CropPolicy

    state = BRIGHTNESS.build().state_dict()
    save_weights(state, BRIGHTNESS, site, quantization="fp32")
    data = _grey_dataset(tmp_path / "greys", tuple(range(10, 170, 8)), tuple(range(90, 250, 8)))
    scores = tmp_path / "scores.csv"
    call_command("evaluate", "--faces", str(data), "--scores", str(scores))
    call_command("calibrate_ensemble", "--scores", str(scores))
    fitted = json.loads((site / "ensemble.json").read_text())
    size = read_manifest(site, "bright").input_size
    assert fitted["inputs"]["bright"]["input_size"] == size
    assert fitted["inputs"]["bright"]["crop"] is None
    call_command("evaluate", "--faces", str(data), "--json", str(tmp_path / "applied.json"))
    applied = json.loads((tmp_path / "applied.json").read_text())["combination"]
    assert "calibration_not_applied" not in applied
    for changed in ({"input_size": size * 2}, {"crop": CropPolicy("square", 0.1)}):
        save_weights(state, BRIGHTNESS, site, quantization="fp32", **changed)
        call_command("evaluate", "--faces", str(data), "--json", str(tmp_path / "after.json"))
        after = json.loads((tmp_path / "after.json").read_text())["combination"]
        assert after == {
            "method": "mean",
            "calibration_not_applied": "fitted on faces prepared otherwise (input size, crop "
            "or normalisation) for bright",
        }, changed


def test_the_ensemble_fit_is_for_the_members_mirroring_as_analyses_do(
    site: Path, tmp_path: Path, capsys
):
    from django.conf import settings

    save_weights(BRIGHTNESS.build().state_dict(), BRIGHTNESS, site, quantization="fp32")
    data = _grey_dataset(tmp_path / "greys", tuple(range(10, 170, 8)), tuple(range(90, 250, 8)))
    mirroring = {**settings.TRUSTTRACE, "MIRROR": ("bright",)}
    plain = {**settings.TRUSTTRACE, "MIRROR": ()}
    with override_settings(TRUSTTRACE=mirroring):
        call_command("evaluate", "--faces", str(data), "--scores", str(tmp_path / "m.csv"))
        call_command("calibrate_ensemble", "--scores", str(tmp_path / "m.csv"))
        assert json.loads((site / "ensemble.json").read_text())["mirrored"] == ["bright"]
        call_command("evaluate", "--faces", str(data), "--json", str(tmp_path / "m.json"))
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert {r["mirrored:bright"] for r in rows} == {"1"}
    applied = json.loads((tmp_path / "m.json").read_text())["combination"]
    assert applied["method"] == "weighted mean of logits, then platt"
    with override_settings(TRUSTTRACE=plain):
        # Scores of faces as is and mirrored do not fit analyses that score as is...
        with pytest.raises(CommandError, match="the scores mirrored bright but analyses here"):
            call_command("calibrate_ensemble", "--scores", str(tmp_path / "m.csv"))
        # ... and a fit made on them is not applied to such analyses.
        call_command("evaluate", "--faces", str(data), "--json", str(tmp_path / "p.json"))
        call_command("evaluate", "--faces", str(data), "--scores", str(tmp_path / "p.csv"))
    assert json.loads((tmp_path / "p.json").read_text())["combination"] == {
        "method": "mean",
        "calibration_not_applied": (
            "fitted on faces scored as is and mirrored by bright, which now scores them as is only"
        ),
    }
    assert {r["mirrored:bright"] for r in csv.DictReader((tmp_path / "p.csv").open())} == {"0"}
    with (
        override_settings(TRUSTTRACE=mirroring),
        pytest.raises(
            CommandError, match="the scores mirrored no member but analyses here mirror bright"
        ),
    ):
        call_command("calibrate_ensemble", "--scores", str(tmp_path / "p.csv"))


def test_a_precision_the_backend_cannot_run_is_a_clear_error(site: Path, tmp_path: Path):
    save_weights(BRIGHTNESS.build().state_dict(), BRIGHTNESS, site, quantization="fp32")
    data = _grey_dataset(tmp_path / "greys")
    # The default backend on CPU is ONNX Runtime, which computes in fp32 only.
    with pytest.raises(CommandError, match="needs the openvino or torch backend"):
        call_command("evaluate", "--faces", str(data), "--precision", "bf16")


def test_evaluate_needs_one_source(site: Path):
    with pytest.raises(CommandError, match="either --faces or --videos"):
        call_command("evaluate")


@pytest.mark.slow
def test_train_detector_trains_exports_and_evaluates(site: Path, tmp_path: Path, capsys):
    data = write_dataset(tmp_path / "toy", n_train=16, n_val=8)
    run = tmp_path / "run"
    call_command(
        "train_detector",
        "--member",
        "toy_b",
        "--data",
        str(data),
        "--out",
        str(run),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--sbi",
        "0.2",
        "--ssim-blackout",
        "--drop-path",
        "0.1",
        "--weight-decay",
        "0.02",
        "--export",
        str(site),
    )
    printed = capsys.readouterr().out
    assert "toy_b: best epoch" in printed and "Exported toy_b" in printed
    manifest = read_manifest(site, "toy_b")
    assert manifest.input_size == 24 and manifest.provenance["data_digest"]
    assert "train_detector --batch-size 8" in manifest.provenance["command"]
    assert "--member toy_b" in manifest.provenance["command"]
    run_info = json.loads((run / "run.json").read_text())
    assert run_info["recipe"]["sbi_prob"] == 0.2 and run_info["recipe"]["blackout_prob"] == 0.5
    assert run_info["recipe"]["drop_path"] == 0.1 and run_info["recipe"]["weight_decay"] == 0.02
    out_json = tmp_path / "e.json"
    call_command(
        "evaluate",
        "--faces",
        str(data),
        "--split",
        "val",
        "--members",
        "toy_b",
        "--json",
        str(out_json),
        "--out",
        str(tmp_path / "ef"),
    )
    result = json.loads(out_json.read_text())
    assert result["n"] == {"real": 4, "fake": 4} and set(result["members"]) == {"toy_b"}


def test_train_detector_finds_keypoints_when_the_recipe_blacks_out(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from dataclasses import replace

    from ensemble.training import recipes

    # Like B7's recipe: the blackout is on without any flag.
    toy = replace(recipes.DEFAULT_RECIPE, input_size=24, blackout_prob=0.5)
    monkeypatch.setitem(recipes.RECIPES, "toy_b", toy)
    data = write_dataset(tmp_path / "toy", n_train=8, n_val=4, keypoints=False)
    run = tmp_path / "run"
    call_command(
        "train_detector",
        "--member",
        "toy_b",
        "--data",
        str(data),
        "--out",
        str(run),
        "--epochs",
        "1",
        "--batch-size",
        "8",
    )
    run_info = json.loads((run / "run.json").read_text())
    assert run_info["recipe"]["blackout_prob"] == 0.5
    # --device auto (the default): the CPU on a machine without CUDA.
    assert run_info["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    cached = json.loads((run / "keypoints.json").read_text())
    assert len(cached) == 8  # every training crop was looked at once


def test_train_detector_refuses_unknown_member_and_bad_data(site: Path, tmp_path: Path):
    with pytest.raises(CommandError, match="known detectors"):
        call_command(
            "train_detector",
            "--member",
            "nope",
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        )
    with pytest.raises(CommandError, match="neither a dataset folder nor a metadata CSV"):
        call_command(
            "train_detector",
            "--member",
            "toy_a",
            "--data",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "o"),
        )


def test_extract_faces_writes_member_datasets_with_keypoints(site: Path, tmp_path: Path):
    from ensemble.crops import crop_face
    from ensemble.training.extract import crop_keypoints

    videos = tmp_path / "videos"
    videos.mkdir()
    mf.write_clip(videos / "real.mp4", frames=8, face_at=(60, 40, 160))
    mf.write_clip(videos / "fake.mp4", frames=8, face_at=(70, 30, 160))
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "file,label,split,original\nreal.mp4,REAL,train,\nfake.mp4,FAKE,train,real.mp4\n"
    )
    out = tmp_path / "faces"
    call_command(
        "extract_faces",
        "--videos",
        str(videos),
        "--labels",
        str(labels),
        "--out",
        str(out),
        "--members",
        "toy_a,toy_b",
    )
    for name, size in (("toy_a", 32), ("toy_b", 24)):
        rows = list(csv.DictReader((out / name / "metadata.csv").open()))
        assert {r["label"] for r in rows} == {"REAL", "FAKE"}
        for r in rows:
            img = cv2.imread(str(out / name / r["file"]))
            assert img.shape == (size, size, 3)
            kp = [float(v) for v in r["keypoints"].split()]
            assert len(kp) == 12 and all(-1 <= v <= size + 1 for v in kp)
        from ensemble.training.data import load_samples

        samples = load_samples(out / name)
        fakes = [s for s in samples if s.label == 1]
        assert fakes and all(s.original is not None for s in fakes)

    # The keypoint mapping follows crop_face's geometry for both policies.
    from ensemble.crops import CropPolicy

    frame = np.zeros((240, 320, 3), np.uint8)
    point = (150.0, 100.0)
    cv2.circle(frame, (150, 100), 3, (255, 255, 255), -1)
    box = (110.0, 60.0, 210.0, 180.0)
    policies = (
        CropPolicy("square", 0.3),
        CropPolicy("isotropic", 1 / 3),
        CropPolicy("square", 0.05, -0.06),
        CropPolicy("isotropic", 0.2, 0.1),
    )
    for policy in policies:
        crop = crop_face(frame, box, policy, 128)
        ys, xs = np.nonzero(crop[..., 0] > 100)
        (kx, ky), *_ = crop_keypoints(frame.shape[:2], box, [point] * 6, policy, 128)
        assert abs(xs.mean() - kx) < 1.5 and abs(ys.mean() - ky) < 1.5, policy


def test_train_detector_runs_outside_the_work_tree_and_exports_the_crop(site: Path, tmp_path: Path):
    data = write_dataset(tmp_path / "toy", n_train=8, n_val=4, originals=True)
    call_command(
        "train_detector",
        "--member",
        "toy_b",
        "--data",
        str(data),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--paired",
        "--precision",
        "fp32",
        "--time-budget",
        "60",
        "--export",
        str(site),
        "--crop",
        "square:0.05:-0.06",
    )
    run = tmp_path / "runs" / "toy_b"
    run_info = json.loads((run / "run.json").read_text())
    assert run_info["paired"] is True and run_info["precision"] == "fp32"
    assert run_info["status"] == "finished" and run_info["config"]["time_budget"] == 60
    assert len(list((tmp_path / "crops").glob("crops-*.npz"))) == 2  # train and val decoded once
    manifest = read_manifest(site, "toy_b")
    assert manifest.crop == {"kind": "square", "margin": 0.05, "shift": -0.06}
    assert manifest.provenance["training"]["precision"] == "fp32"
    assert manifest.metrics["ece"] >= 0
    # Resuming a finished run trains no further; a new run may not overwrite it.
    call_command(
        "train_detector",
        "--member",
        "toy_b",
        "--data",
        str(data),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--paired",
        "--precision",
        "fp32",
        "--resume",
    )
    assert len(json.loads((run / "log.json").read_text())) == 1
    with pytest.raises(CommandError, match="--resume"):
        call_command("train_detector", "--member", "toy_b", "--data", str(data))
    # A re-export without --crop keeps the installed crop.
    call_command(
        "train_detector",
        "--member",
        "toy_b",
        "--data",
        str(data),
        "--export-only",
        "--export",
        str(site),
    )
    assert read_manifest(site, "toy_b").crop == {"kind": "square", "margin": 0.05, "shift": -0.06}
    assert not list(run.glob("*.part"))  # run files are written whole, then moved
    # A run.json cut short (by a stop mid-write, before it was written whole)
    # is named, not a JSONDecodeError traceback.
    text = (run / "run.json").read_text()
    (run / "run.json").write_text(text[: len(text) // 2])
    for extra in (["--resume", "--epochs", "1", "--batch-size", "4", "--paired"],
                  ["--export-only", "--export", str(site)]):  # fmt: skip
        with pytest.raises(CommandError, match=r"run\.json cannot be read"):
            call_command("train_detector", "--member", "toy_b", "--data", str(data), *extra)


def test_train_detector_refuses_a_malformed_crop_before_training(site: Path, tmp_path: Path):
    data = write_dataset(tmp_path / "toy", n_train=8, n_val=4)
    run = tmp_path / "run"
    with pytest.raises(CommandError, match="crop policy"):
        call_command(
            "train_detector",
            "--member",
            "toy_b",
            "--data",
            str(data),
            "--out",
            str(run),
            "--epochs",
            "1",
            "--export",
            str(site),
            "--crop",
            "oval:0.1",
        )
    with pytest.raises(CommandError, match="--export"):
        call_command(
            "train_detector",
            "--member",
            "toy_b",
            "--data",
            str(data),
            "--out",
            str(run),
            "--epochs",
            "1",
            "--crop",
            "square:0.1",
        )
    assert not run.exists()


def test_train_detector_init_from_missing_weights_says_so(site: Path, tmp_path: Path):
    data = write_dataset(tmp_path / "toy", n_train=8, n_val=4)
    with pytest.raises(CommandError, match="toy_b"):
        call_command(
            "train_detector",
            "--member",
            "toy_b",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--init-from",
            str(tmp_path / "nothing"),
        )


def test_train_detector_summary_reports_a_runs_validation_figures(
    site: Path, tmp_path: Path, capsys
):
    """--summary reads the best epoch's predictions: no data, no export."""
    run = tmp_path / "run"
    run.mkdir()
    logits, labels = [-2.0, -1.0, 1.0, 2.0], [0, 1, 0, 1]
    with (run / "val_predictions.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "logit"])
        w.writerows(
            [f"c{i}.png", y, z] for i, (z, y) in enumerate(zip(logits, labels, strict=True))
        )
    (run / "log.csv").write_text("epoch,val_auc\n1,0.75\n")
    call_command("train_detector", "--member", "bright", "--out", str(run), "--summary")
    summary = json.loads(capsys.readouterr().out)
    # Fakes at -1 and 2, reals at -2 and 1: 3 of 4 pairs ordered.
    assert summary["raw"]["auc"] == pytest.approx(0.75)
    assert summary["raw"]["accuracy"] == pytest.approx(0.5)
    nll = -np.mean(
        [math.log(1 / (1 + math.exp(-z if y else z))) for z, y in zip(logits, labels, strict=True)]
    )
    assert summary["raw"]["log_loss"] == pytest.approx(nll, rel=1e-6)
    # The fitted temperature can only lower the validation NLL; AUC is unchanged.
    assert summary["calibrated"]["log_loss"] < summary["raw"]["log_loss"]
    assert summary["temperature"] > 1 and summary["calibrated"]["auc"] == pytest.approx(0.75)
    assert (summary["samples"], summary["fakes"]) == (4, 2)
    assert summary["epochs"] == [{"epoch": "1", "val_auc": "0.75"}]
    with pytest.raises(CommandError, match=r"no val_predictions\.csv"):
        call_command("train_detector", "--member", "bright", "--out", str(tmp_path), "--summary")
    with pytest.raises(CommandError, match="--data is required"):
        call_command("train_detector", "--member", "bright", "--out", str(tmp_path / "new"))


def _candidate_run(run: Path, data: Path, logit_of, member: str = "bright") -> Path:
    """A training run folder as train_detector leaves it after validating:
    ``run.json`` and the best epoch's ``val_predictions.csv`` over ``data``."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "run.json").write_text(json.dumps({"member": member, "data": str(data)}))
    with (data / "metadata.csv").open() as fh:
        crops = list(csv.DictReader(fh))
    with (run / "val_predictions.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "logit"])
        for c in crops:
            w.writerow([str(data / c["file"]), c["label"], logit_of(c["file"], int(c["label"]))])
    return run


def test_calibrate_ensemble_measures_a_candidate_run_without_installing_it(
    site: Path, tmp_path: Path, capsys
):
    save_weights(BRIGHTNESS.build().state_dict(), BRIGHTNESS, site, quantization="fp32")
    # Overlapping greys: the installed member ranks them imperfectly.
    data = _grey_dataset(tmp_path / "greys", tuple(range(10, 170, 8)), tuple(range(90, 250, 8)))
    scores = tmp_path / "scores.csv"
    call_command("evaluate", "--faces", str(data), "--scores", str(scores))
    capsys.readouterr()
    call_command("calibrate_ensemble", "--scores", str(scores), "--dry-run")
    installed = capsys.readouterr().out
    assert "cross-validated: AUC 1.0000" not in installed

    # A run that orders every crop right (fakes above reals, by a margin).
    def perfect(file: str, label: int) -> float:
        return 3.0 + (hash(file) % 7) / 10 if label else -3.0 - (hash(file) % 5) / 10

    run = _candidate_run(tmp_path / "run", data, perfect)
    report = tmp_path / "fit.json"
    # Without --dry-run too: a candidate is never written.
    call_command(
        "calibrate_ensemble", "--scores", str(scores), "--candidate", f"bright={run}",
        "--json", str(report),
    )  # fmt: skip
    out = capsys.readouterr().out
    assert f"candidate bright: {run}" in out and "AUC 1.0000" in out
    assert "cross-validated: AUC 1.0000" in out
    assert "nothing written" in out
    assert not (site / "ensemble.json").exists()
    fitted = json.loads(report.read_text())
    assert fitted["members"]["bright"].startswith("run:")
    assert fitted["provenance"]["candidates"] == {"bright": str(run)}
    assert fitted["metrics"]["cross_validated"]["auc"] == pytest.approx(1.0)
    # The installed weights' scores are not in the figures: the member is
    # replaced, not added (one member, so the fit ranks as the candidate does).
    assert fitted["member_weights"] == {"bright": pytest.approx(1.0)}

    def refused(match: str, *candidate: str) -> None:
        with pytest.raises(CommandError, match=match):
            call_command("calibrate_ensemble", "--scores", str(scores), *candidate)
        assert not (site / "ensemble.json").exists()

    refused("takes MEMBER=RUN", "--candidate", str(run))
    refused("not a member of this ensemble", "--candidate", f"tiny_a={run}")
    refused("given twice", "--candidate", f"bright={run}", "--candidate", f"bright={run}")
    refused("not a training run that has validated", "--candidate", f"bright={tmp_path}")
    other = _candidate_run(tmp_path / "other", data, perfect, member="tiny_a")
    refused("trained 'tiny_a', not bright", "--candidate", f"bright={other}")
    # A run over another dataset, or part of the crops, or other labels.
    fewer = _grey_dataset(tmp_path / "fewer")
    refused("validated 6 crops and the scores hold 40", "--candidate",
            f"bright={_candidate_run(tmp_path / 'fewer-run', fewer, perfect)}")  # fmt: skip
    flipped = _candidate_run(tmp_path / "flipped", data, perfect)
    rows = (flipped / "val_predictions.csv").read_text().splitlines()
    name, label, z = rows[1].split(",")
    rows[1] = ",".join([name, str(1 - int(label)), z])
    (flipped / "val_predictions.csv").write_text("\n".join(rows) + "\n")
    refused("labels crops differently", "--candidate", f"bright={flipped}")

    # --data given as the dataset's metadata.csv (the crops lie beside it), or
    # the predictions written in a session that kept the dataset elsewhere:
    # the same crops, found by their names in the dataset. Both were refused
    # as "not under the run's data".
    def accepted(candidate: Path) -> None:
        call_command("calibrate_ensemble", "--scores", str(scores), "--dry-run",
                     "--candidate", f"bright={candidate}")  # fmt: skip
        assert "cross-validated: AUC 1.0000" in capsys.readouterr().out

    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "data": str(data / "metadata.csv")}))
    accepted(run)
    (run / "val_predictions.csv").write_text(
        (run / "val_predictions.csv").read_text().replace(str(data), str(tmp_path / "elsewhere"))
    )
    accepted(run)
    # Crops the dataset does not hold are not taken for others.
    (run / "val_predictions.csv").write_text(
        (run / "val_predictions.csv").read_text().replace(".png", "-x.png")
    )
    refused("of the run's not among them", "--candidate", f"bright={run}")
    from django.conf import settings

    with override_settings(TRUSTTRACE={**settings.TRUSTTRACE, "MIRROR": ("bright",)}):
        refused("a run validates crops as is only", "--candidate", f"bright={flipped}")


def test_calibrate_ensemble_refuses_scores_of_training_crops(site: Path, tmp_path: Path):
    save_weights(BRIGHTNESS.build().state_dict(), BRIGHTNESS, site, quantization="fp32")
    data = _grey_dataset(tmp_path / "greys", tuple(range(10, 170, 8)), tuple(range(90, 250, 8)))
    meta = data / "metadata.csv"
    lines = meta.read_text().splitlines()
    # A few crops of the table in the train split: evaluate without --split scores them too.
    meta.write_text("\n".join([*lines[:-4], *(x.replace(",val", ",train") for x in lines[-4:])]))
    scores = tmp_path / "scores.csv"
    call_command(
        "evaluate",
        "--faces",
        str(data),
        "--json",
        str(tmp_path / "e.json"),
        "--scores",
        str(scores),
    )
    with pytest.raises(CommandError, match="train split: fit the ensemble on validation crops"):
        call_command("calibrate_ensemble", "--scores", str(scores), "--dry-run")
    assert not (site / "ensemble.json").exists()
    # A held-out set no member trained on, split by hash: the caller vouches.
    call_command("calibrate_ensemble", "--scores", str(scores), "--any-split")
    assert (site / "ensemble.json").exists()


def test_calibrate_member_fits_a_bias_that_analyses_then_apply(site: Path, tmp_path: Path, capsys):
    """A member whose scores lean to one side: every crop is brighter than
    mid-grey, so the brightness member calls most reals fake. A temperature
    cannot fix that; the refitted bias does, and analyses use it."""
    save_weights(BRIGHTNESS.build().state_dict(), BRIGHTNESS, site, quantization="fp32")
    sha = read_manifest(site, "bright").weights_sha256
    data = _grey_dataset(tmp_path / "greys", tuple(range(80, 200, 6)), tuple(range(140, 255, 6)))
    scores = tmp_path / "scores.csv"
    call_command("evaluate", "--faces", str(data), "--scores", str(scores))
    call_command("calibrate_ensemble", "--scores", str(scores))
    capsys.readouterr()
    call_command("calibrate_member", "--member", "bright", "--scores", str(scores), "--dry-run")
    assert "dry run: nothing written" in capsys.readouterr().out
    assert read_manifest(site, "bright").bias == 0.0
    report_path = tmp_path / "refit.json"
    call_command(
        "calibrate_member",
        "--member",
        "bright",
        "--scores",
        str(scores),
        "--json",
        str(report_path),
    )
    out = capsys.readouterr().out
    assert "ensemble.json was fitted with bright's old calibration" in out
    report = json.loads(report_path.read_text())
    manifest = read_manifest(site, "bright")
    assert manifest.weights_sha256 == sha  # the weights are untouched
    assert manifest.bias == pytest.approx(report["bias"]) and manifest.bias < -0.5
    assert manifest.temperature == pytest.approx(report["temperature"])
    assert report["in_sample"]["log_loss"] < report["before"]["log_loss"] - 0.05
    assert report["cross_validated"]["log_loss"] < report["before"]["log_loss"]
    assert report["in_sample"]["auc"] == pytest.approx(report["before"]["auc"])  # same ranking
    (record,) = manifest.provenance["calibrations"]
    assert record["replaced"] == {"temperature": 1.0, "bias": 0.0, "threshold": 0.5}
    assert record["scores"] == [{"file": str(scores), "sha256": file_sha256(scores)}]
    assert record["n"] == 40 and record["metrics"] == report["in_sample"]
    assert "Running workers load the members again, with this calibration" in out
    # The old scores carry the old calibration: refused for the ensemble fit,
    # and the ensemble fitted with it is not applied.
    with pytest.raises(CommandError, match="calibrated otherwise than the installed calibration"):
        call_command("calibrate_ensemble", "--scores", str(scores))
    call_command(
        "evaluate",
        "--faces",
        str(data),
        "--json",
        str(tmp_path / "e.json"),
        "--scores",
        str(scores),
    )
    result = json.loads((tmp_path / "e.json").read_text())
    # (The temperature moved too, and is named first.)
    assert result["combination"] == {
        "method": "mean",
        "calibration_not_applied": "fitted with another temperature of bright",
    }
    assert result["members"]["bright"]["ece"] < report["before"]["ece"]
    rows = list(csv.DictReader(scores.open()))
    z = np.array([float(r["logit:bright"]) for r in rows])
    p = np.array([float(r["prob:bright"]) for r in rows])
    assert p == pytest.approx(1 / (1 + np.exp(-(z / manifest.temperature + manifest.bias))))
    call_command("calibrate_ensemble", "--scores", str(scores))
    assert json.loads((site / "ensemble.json").read_text())["member_biases"] == {
        "bright": pytest.approx(manifest.bias)
    }
    call_command("evaluate", "--faces", str(data), "--json", str(tmp_path / "fitted.json"))
    fitted = json.loads((tmp_path / "fitted.json").read_text())["combination"]
    assert fitted["method"] == "weighted mean of logits, then platt"
    # The same temperature with another bias: the fit no longer applies.
    recalibrated = manifest.provenance["calibrations"]
    save_weights(
        BRIGHTNESS.build().state_dict(),
        BRIGHTNESS,
        site,
        quantization="fp32",
        temperature=manifest.temperature,
        bias=manifest.bias + 0.2,
        provenance={"calibrations": recalibrated},
    )
    call_command("evaluate", "--faces", str(data), "--json", str(tmp_path / "shifted.json"))
    assert json.loads((tmp_path / "shifted.json").read_text())["combination"] == {
        "method": "mean",
        "calibration_not_applied": "fitted with another calibration bias of bright",
    }


def test_calibrate_member_refuses_scores_that_do_not_fit(site: Path, tmp_path: Path):
    from django.conf import settings

    save_weights(BRIGHTNESS.build().state_dict(), BRIGHTNESS, site, quantization="fp32")
    data = _grey_dataset(tmp_path / "greys", tuple(range(10, 170, 8)), tuple(range(90, 250, 8)))
    scores = tmp_path / "scores.csv"
    call_command("evaluate", "--faces", str(data), "--scores", str(scores))
    with (
        override_settings(TRUSTTRACE={**settings.TRUSTTRACE, "MIRROR": ("bright",)}),
        pytest.raises(CommandError, match="did not mirror bright but analyses here do"),
    ):
        call_command("calibrate_member", "--member", "bright", "--scores", str(scores))
    assert "calibrations" not in read_manifest(site, "bright").provenance
    without_logits = tmp_path / "probs-only.csv"
    rows = list(csv.DictReader(scores.open()))
    with without_logits.open("w", newline="") as fh:
        w = csv.DictWriter(fh, [k for k in rows[0] if not k.startswith("logit:")])
        w.writeheader()
        w.writerows({k: v for k, v in r.items() if not k.startswith("logit:")} for r in rows)
    with pytest.raises(CommandError, match="but not its logits"):
        call_command("calibrate_member", "--member", "bright", "--scores", str(without_logits))
    assert "calibrations" not in read_manifest(site, "bright").provenance
    # Nor can the ensemble be fitted on it: its calibration cannot be checked.
    with pytest.raises(CommandError, match="cannot be checked against the installed one"):
        call_command("calibrate_ensemble", "--scores", str(without_logits))
    (site / "ensemble.json").write_text("{not json")
    with pytest.raises(CommandError, match=r"ensemble\.json cannot be read"):
        call_command("calibrate_member", "--member", "bright", "--scores", str(scores))
    assert "calibrations" not in read_manifest(site, "bright").provenance  # checked first
    (site / "ensemble.json").unlink()
    with pytest.raises(CommandError, match="unknown detector 'nobody'"):
        call_command("calibrate_member", "--member", "nobody", "--scores", str(scores))
    model = BRIGHTNESS.build()
    with torch.no_grad():
        next(model.parameters()).add_(0.5)
    save_weights(model.state_dict(), BRIGHTNESS, site, quantization="fp32")
    with pytest.raises(CommandError, match=r"bright was scored with weights .* are installed"):
        call_command("calibrate_member", "--member", "bright", "--scores", str(scores))
    assert "calibrations" not in read_manifest(site, "bright").provenance


def test_train_detector_distils_from_the_installed_ensemble(site: Path, tmp_path: Path):
    from ensemble.calibration import EnsembleCalibration, write_calibration

    save_weights(BRIGHTNESS.build().state_dict(), BRIGHTNESS, site, quantization="fp32")
    manifest = read_manifest(site, "bright")
    fitted = EnsembleCalibration(
        members={"bright": manifest.weights_sha256},
        slope=2.0,
        bias=0.1,
        member_weights={"bright": 1.0},
        temperatures={"bright": manifest.temperature},
        member_biases={"bright": manifest.bias},
        mirrored=(),
    )
    write_calibration(site, fitted)
    data = write_dataset(tmp_path / "toy", n_train=8, n_val=4, originals=True)
    scores = tmp_path / "train-scores.csv"
    call_command("evaluate", "--faces", str(data), "--split", "train", "--scores", str(scores))
    assert {r["split"] for r in csv.DictReader(scores.open())} == {"train"}
    argv = ["--member", "toy_b", "--data", str(data), "--epochs", "1", "--batch-size", "4"]
    call_command("train_detector", *argv, "--precision", "fp32", "--teacher", str(scores))
    run_info = json.loads((tmp_path / "runs" / "toy_b" / "run.json").read_text())
    assert run_info["teacher"]["share"] == 0.5  # the default share
    assert run_info["teacher"]["weights"] == str(site)  # the installed ensemble
    assert run_info["teacher"]["scores"] == [str(scores)]
    for stray in (["--distill", "0.3"], ["--teacher-weights", str(site)]):
        with pytest.raises(CommandError, match="go with --teacher"):
            call_command("train_detector", *argv, "--out", str(tmp_path / "r2"), *stray)
    # A member recalibrated since the fit: its scores are another teacher.
    write_calibration(site, replace(fitted, temperatures={"bright": manifest.temperature * 2}))
    with pytest.raises(CommandError, match="another temperature or bias"):
        call_command(
            "train_detector", *argv, "--out", str(tmp_path / "r3"), "--teacher", str(scores)
        )
