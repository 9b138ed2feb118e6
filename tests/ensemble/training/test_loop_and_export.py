from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ensemble.errors import WeightsIntegrityError
from ensemble.members import load_member
from ensemble.registry import Registry
from ensemble.training.export import export_run, roundtrip
from ensemble.training.loop import TrainConfig, TrainingError, apply_drop_path, train
from ensemble.weights import dequantize_int8, quantize_int8, read_manifest
from tests.training_toys import REGISTRY, write_dataset

SPEC = REGISTRY.get("toy_a")


class SimulatedCrashError(Exception):
    pass


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("toy-data"))


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(member=SPEC.name, data=data, out=out, epochs=3, batch_size=8, lr=3e-3, seed=3,
                command="pytest")  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_toy_run_writes_logs_curves_checkpoints_and_provenance(dataset: Path, tmp_path: Path):
    result = train(_config(dataset, tmp_path, epochs=2), SPEC, progress=False)
    assert [h.epoch for h in result.history] == [1, 2]
    for name in ("last.pt", "best.pt", "log.csv", "log.json", "curves.png", "run.json",
                 "val_predictions.csv"):  # fmt: skip
        assert (tmp_path / name).is_file(), name
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert len(rows) == 2 and float(rows[0]["val_loss"]) > 0
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["command"] == "pytest" and len(run["data_digest"]) == 64
    assert run["code_version"] and run["n_train"] == {"real": 12, "fake": 12}
    assert run["best_epoch"] == result.best_epoch


def test_toy_model_learns_a_visible_artefact(dataset: Path, tmp_path: Path):
    result = train(_config(dataset, tmp_path, epochs=6, lr=1e-2, augment=False), SPEC,
                   progress=False)  # fmt: skip
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert max(h.val_acc for h in result.history) >= 0.9


def test_resumed_run_equals_an_uninterrupted_one(dataset: Path, tmp_path: Path):
    settings = dict(epochs=3, sbi_prob=0.3, blackout_prob=0.5, ema_decay=0.9)
    whole = train(_config(dataset, tmp_path / "whole", **settings), SPEC, progress=False)

    def stop_after_first(row) -> None:
        if row.epoch == 1:
            raise SimulatedCrashError

    with pytest.raises(SimulatedCrashError):
        train(_config(dataset, tmp_path / "cut", **settings), SPEC, on_epoch=stop_after_first,
              progress=False)  # fmt: skip
    resumed = train(_config(dataset, tmp_path / "cut", resume=True, **settings), SPEC,
                    progress=False)  # fmt: skip
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    for a, b in zip(whole.history, resumed.history, strict=True):
        assert a.train_loss == b.train_loss and a.val_loss == b.val_loss
    last_a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    last_b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    for key in ("model", "ema"):
        for k, v in last_a[key].items():
            assert torch.equal(v, last_b[key][k]), (key, k)


def test_early_stopping_ends_the_run_when_val_loss_stops_improving(dataset: Path, tmp_path: Path):
    # A learning rate too small to move the weights: validation loss cannot improve.
    result = train(_config(dataset, tmp_path, epochs=6, lr=1e-12, patience=2, augment=False),
                   SPEC, progress=False)  # fmt: skip
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1
    assert json.loads((tmp_path / "run.json").read_text())["stopped_early"] is True


def test_resume_without_checkpoint_is_refused(dataset: Path, tmp_path: Path):
    with pytest.raises(TrainingError, match="no checkpoint"):
        train(_config(dataset, tmp_path, resume=True), SPEC, progress=False)


def test_drop_path_is_set_where_the_architecture_has_it():
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=1)
    assert apply_drop_path(model, 0.1)
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and rates[0] == 0 and rates[-1] == pytest.approx(0.1)
    assert not apply_drop_path(SPEC.build(), 0.1)


def test_int8_round_trip_stays_within_half_a_step_per_channel():
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3) * torch.linspace(0.01, 3, 16).view(-1, 1, 1, 1)
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (16,)
    back = dequantize_int8({"w": q, "w:int8_scale": scale})["w"]
    err = (back - w).abs().amax(dim=(1, 2, 3))
    assert (err <= scale / 2 + 1e-7).all()


def test_export_shards_manifest_and_reload_with_hash_check(dataset: Path, tmp_path: Path):
    run = tmp_path / "run"
    train(_config(dataset, run, epochs=2), SPEC, progress=False)
    weights = tmp_path / "weights"
    limit = 1024
    report = export_run(run, SPEC, weights, data=dataset, description="toy squares",
                        max_shard_bytes=limit)  # fmt: skip
    manifest = read_manifest(weights, SPEC.name)
    assert manifest.quantization == report.quantization in ("int8", "fp16")
    assert len(manifest.files) > 1
    for f in manifest.files:
        path = weights / SPEC.name / f.path
        tensors = load_file(str(path))
        # A shard exceeds the limit only when a single tensor does.
        assert (
            sum(t.numel() * t.element_size() for t in tensors.values()) <= limit
            or len(tensors) <= 2
        )
    assert manifest.temperature == pytest.approx(report.temperature)
    assert manifest.provenance["data"] == "toy squares"
    assert manifest.provenance["command"] == "pytest"
    assert set(manifest.metrics["auc_by_precision"]) == {"fp32", "int8", "fp16"}
    if report.quantization == "int8":
        stored = {
            k: v
            for f in manifest.files
            for k, v in load_file(str(weights / SPEC.name / f.path)).items()
        }
        assert stored["features.0.weight"].dtype == torch.int8

    registry = Registry()
    registry.register(SPEC)
    member = load_member(SPEC.name, weights, registry=registry)
    assert member.temperature == pytest.approx(report.temperature)
    assert member.weights_sha256 == manifest.weights_sha256
    best = torch.load(run / "best.pt", weights_only=True)["state_dict"]
    expected = roundtrip(best, report.quantization)
    for k, v in member.model.state_dict().items():
        assert torch.allclose(v.float(), expected[k].float(), atol=1e-6), k

    shard = weights / SPEC.name / manifest.files[0].path
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match="damaged or was replaced"):
        load_member(SPEC.name, weights, registry=registry)
