from __future__ import annotations

import csv
import itertools
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ensemble.errors import WeightsIntegrityError
from ensemble.members import load_member
from ensemble.registry import REGISTRY as CORE_REGISTRY
from ensemble.registry import Registry
from ensemble.training.export import export_run, installed_bytes, roundtrip
from ensemble.training.loop import (
    Ema,
    TrainConfig,
    TrainingError,
    apply_drop_path,
    smooth_targets,
    train,
    warmup_cosine,
)
from ensemble.training.recipes import RECIPES
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


def test_loader_worker_processes_do_not_change_the_run(dataset: Path, tmp_path: Path):
    settings = dict(epochs=1, sbi_prob=0.3, blackout_prob=0.5)
    alone = train(_config(dataset, tmp_path / "w0", **settings), SPEC, progress=False)
    workers = train(_config(dataset, tmp_path / "w2", num_workers=2, **settings), SPEC,
                    progress=False)  # fmt: skip
    assert [(h.train_loss, h.val_loss) for h in alone.history] == [
        (h.train_loss, h.val_loss) for h in workers.history
    ]


def test_early_stopping_ends_the_run_when_val_loss_stops_improving(dataset: Path, tmp_path: Path):
    # A learning rate too small to move the weights: validation loss cannot improve.
    result = train(_config(dataset, tmp_path, epochs=6, lr=1e-12, patience=2, augment=False),
                   SPEC, progress=False)  # fmt: skip
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1
    assert json.loads((tmp_path / "run.json").read_text())["stopped_early"] is True


def test_resuming_a_run_that_stopped_early_trains_no_further(dataset: Path, tmp_path: Path):
    config = _config(dataset, tmp_path, epochs=6, lr=1e-12, patience=1, augment=False)
    first = train(config, SPEC, progress=False)
    assert first.stopped_early and len(first.history) == 2
    last = (tmp_path / "last.pt").read_bytes()
    again = train(replace(config, resume=True), SPEC, progress=False)
    assert again.stopped_early and [h.epoch for h in again.history] == [1, 2]
    assert (tmp_path / "last.pt").read_bytes() == last


def test_resume_with_other_settings_is_refused(dataset: Path, tmp_path: Path):
    train(_config(dataset, tmp_path, epochs=1), SPEC, progress=False)
    with pytest.raises(TrainingError, match=r"other settings.*lr"):
        train(_config(dataset, tmp_path, epochs=1, lr=1e-2, resume=True), SPEC, progress=False)


def test_sources_crossing_splits_are_refused(tmp_path: Path):
    data = write_dataset(tmp_path / "data", n_train=4, n_val=4)
    rows = (data / "metadata.csv").read_text().splitlines()
    # The first val fake claims the first train real as its original.
    rows[0] += ",original"
    rows[1:] = [r + "," for r in rows[1:]]
    first_val_fake = next(i for i, r in enumerate(rows) if r.startswith("fake/val_"))
    rows[first_val_fake] += "real/train_000.png"
    (data / "metadata.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(TrainingError, match="both train and val"):
        train(_config(data, tmp_path / "run", epochs=1), SPEC, progress=False)


def test_ema_decay_warms_up_from_the_first_update():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = Ema(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    # First decay min(0.999, 1/10): the average moves 90% of the way.
    assert ema.model.weight.detach() == pytest.approx(torch.full((1, 2), 0.9))
    for _ in range(10_000):
        ema.update(model)
    assert ema.current_decay() == 0.999


def test_recipes_train_at_the_registry_input_size():
    for name, recipe in RECIPES.items():
        assert recipe.input_size == CORE_REGISTRY.get(name).input_size, name


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
        assert f.bytes == path.stat().st_size
        # The file (header included) exceeds the limit only when it holds a
        # single state_dict entry (a tensor and, for int8, its scales).
        entries = {k.removesuffix(":int8_scale") for k in tensors}
        assert path.stat().st_size <= limit or len(entries) == 1, (f.path, sorted(entries))
    assert installed_bytes(weights) == sum(f.bytes for f in manifest.files)
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


def test_warmup_then_cosine_schedule_has_no_off_by_one():
    factor = warmup_cosine(total_steps=110, warmup_steps=10, min_ratio=0.01)
    # The first optimizer step already gets a non-zero rate; warm-up ends at 1.
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.01 + 0.99 * 0.5)
    assert factor(110) == pytest.approx(0.01) and factor(500) == pytest.approx(0.01)
    after = [factor(s) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(after))
    assert warmup_cosine(10, 0, 0.0)(0) == pytest.approx(1.0)


def test_label_smoothing_pulls_bce_targets_towards_one_half():
    targets = smooth_targets(torch.tensor([0.0, 1.0]), 0.1)
    assert targets.tolist() == pytest.approx([0.05, 0.95])
    assert smooth_targets(torch.tensor([0.0, 1.0]), 0.0).tolist() == [0.0, 1.0]


def test_export_calibrates_on_the_run_s_own_validation_subset(dataset: Path, tmp_path: Path):
    run = tmp_path / "run"
    train(_config(dataset, run, epochs=1, val_limit=6), SPEC, progress=False)
    export_run(run, SPEC, tmp_path / "weights", data=dataset)
    manifest = read_manifest(tmp_path / "weights", SPEC.name)
    assert manifest.metrics["n"] == {"real": 3, "fake": 3}


def test_failed_export_check_leaves_the_installed_member_alone(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from ensemble.training import export
    from ensemble.weights import save_weights

    weights = tmp_path / "weights"
    before = save_weights(SPEC.build().state_dict(), SPEC, weights)
    run = tmp_path / "run"
    train(_config(dataset, run, epochs=1), SPEC, progress=False)
    real_load = export.load_model

    def damaged_on_disk(spec, folder):
        model, manifest = real_load(spec, folder)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        return model, manifest

    monkeypatch.setattr(export, "load_model", damaged_on_disk)
    with pytest.raises(export.ExportError, match="nothing was installed"):
        export_run(run, SPEC, weights, data=dataset)
    assert read_manifest(weights, SPEC.name).weights_sha256 == before.weights_sha256
    load_member(SPEC.name, weights, registry=REGISTRY)
