from __future__ import annotations

import csv
import itertools
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ensemble.errors import TrainingError, WeightsIntegrityError
from ensemble.members import load_member
from ensemble.registry import REGISTRY as CORE_REGISTRY
from ensemble.registry import Registry
from ensemble.training.batches import CropStore, FaceDataset, epoch_plan
from ensemble.training.data import load_samples, read_rgb, resize_to, select
from ensemble.training.export import ExportError, export_run, installed_bytes, roundtrip
from ensemble.training.loop import (
    TrainConfig,
    initial_model,
    resolve_precision,
    resolve_recipe,
    train,
)
from ensemble.training.optim import Ema, apply_drop_path, smooth_targets, warmup_cosine
from ensemble.training.recipes import RECIPES
from ensemble.weights import dequantize_int8, quantize_int8, read_manifest
from tests.tiny_registry import REGISTRY
from tests.training_toys import write_dataset

SPEC = REGISTRY.get("toy_a")


class SimulatedCrashError(Exception):
    pass


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("toy-data"))


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        member=SPEC.name,
        data=data,
        out=out,
        epochs=3,
        batch_size=8,
        lr=3e-3,
        seed=3,
        command="pytest",
    )
    return TrainConfig(**{**base, **kw})


def test_toy_run_writes_logs_curves_checkpoints_and_provenance(dataset: Path, tmp_path: Path):
    result = train(_config(dataset, tmp_path, epochs=2), SPEC, progress=False)
    assert [h.epoch for h in result.history] == [1, 2]
    for name in (
        "last.pt",
        "best.pt",
        "log.csv",
        "log.json",
        "curves.png",
        "run.json",
        "val_predictions.csv",
    ):
        assert (tmp_path / name).is_file(), name
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert len(rows) == 2 and float(rows[0]["val_loss"]) > 0
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["command"] == "pytest" and len(run["data_digest"]) == 64
    assert run["code_version"] and run["n_train"] == {"real": 12, "fake": 12}
    assert run["best_epoch"] == result.best_epoch


def test_toy_model_learns_a_visible_artefact(dataset: Path, tmp_path: Path):
    result = train(
        _config(dataset, tmp_path, epochs=6, lr=1e-2, augment=False), SPEC, progress=False
    )
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert max(h.val_acc for h in result.history) >= 0.9


def test_resumed_run_equals_an_uninterrupted_one(dataset: Path, tmp_path: Path):
    settings = dict(epochs=3, sbi_prob=0.3, blackout_prob=0.5, ema_decay=0.9)
    whole = train(_config(dataset, tmp_path / "whole", **settings), SPEC, progress=False)

    def stop_after_first(row) -> None:
        if row.epoch == 1:
            raise SimulatedCrashError

    with pytest.raises(SimulatedCrashError):
        train(
            _config(dataset, tmp_path / "cut", **settings),
            SPEC,
            on_epoch=stop_after_first,
            progress=False,
        )
    resumed = train(
        _config(dataset, tmp_path / "cut", resume=True, **settings), SPEC, progress=False
    )
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
    workers = train(
        _config(dataset, tmp_path / "w2", num_workers=2, **settings), SPEC, progress=False
    )
    assert [(h.train_loss, h.val_loss) for h in alone.history] == [
        (h.train_loss, h.val_loss) for h in workers.history
    ]


def test_early_stopping_ends_the_run_when_val_loss_stops_improving(dataset: Path, tmp_path: Path):
    # A learning rate too small to move the weights: validation loss cannot improve.
    result = train(
        _config(dataset, tmp_path, epochs=6, lr=1e-12, patience=2, augment=False),
        SPEC,
        progress=False,
    )
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


def test_run_overrides_replace_the_recipes_warmup_ema_and_regularisation(tmp_path: Path):
    spec = CORE_REGISTRY.get("effnet_b7")
    base = RECIPES["effnet_b7"]
    kept = resolve_recipe(TrainConfig(member=spec.name, data=tmp_path, out=tmp_path), spec)
    assert (kept.warmup_epochs, kept.ema_decay) == (base.warmup_epochs, base.ema_decay)
    assert (kept.drop_path, kept.weight_decay) == (base.drop_path, base.weight_decay)
    config = TrainConfig(
        member=spec.name,
        data=tmp_path,
        out=tmp_path,
        epochs=1,
        warmup_epochs=0.0,
        ema_decay=0.99,
        input_size=128,
        drop_path=0.0,
        weight_decay=0.01,
    )
    r = resolve_recipe(config, spec)
    assert (r.epochs, r.warmup_epochs, r.ema_decay, r.input_size) == (1, 0.0, 0.99, 128)
    assert (r.drop_path, r.weight_decay) == (0.0, 0.01)  # 0 turns drop path off
    off = resolve_recipe(replace(config, no_ema=True), spec)
    assert off.ema_decay is None
    # A 0 is a value, not "the recipe's": --ema-decay 0 used to train with 0.999.
    assert resolve_recipe(replace(config, ema_decay=0.0), spec).ema_decay == 0.0
    bad_values: list[dict[str, Any]] = [
        {"drop_path": 1.0},
        {"drop_path": -0.1},
        {"weight_decay": -0.01},
        {"patience": 0},  # stopped after the first epoch whatever it scored
        {"batch_size": 0},
        {"lr": 0.0},
        {"lr": float("nan")},
        {"ema_decay": 1.0},
        {"input_size": 0},
    ]
    for bad in bad_values:
        with pytest.raises(TrainingError, match="must be"):
            resolve_recipe(replace(config, **bad), spec)


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
    report = export_run(
        run, SPEC, weights, data=dataset, description="toy squares", max_shard_bytes=limit
    )
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
    # Fitted with the temperature (exactly 0 only if no bias were fitted).
    assert manifest.bias == pytest.approx(report.bias) and report.bias != 0.0
    assert manifest.provenance["data"] == "toy squares"
    assert manifest.provenance["command"] == "pytest"
    # fp16 is measured only when int8 is refused.
    measured = {"fp32", "int8"} | ({"fp16"} if report.quantization == "fp16" else set())
    assert set(manifest.metrics["auc_by_precision"]) == measured
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
    assert (member.temperature, member.bias) == pytest.approx((report.temperature, report.bias))
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


def test_export_refuses_data_other_than_the_run_s(dataset: Path, tmp_path: Path):
    """The temperature, threshold and metrics are measured on ``--data`` and
    the manifest names the run's data: a replaced crop is other data."""
    import shutil

    run = tmp_path / "run"
    train(_config(dataset, run, epochs=1), SPEC, progress=False)
    other = tmp_path / "other"
    shutil.copytree(dataset, other)
    crop = sorted(other.rglob("*.png"))[-1]
    image = cv2.imread(str(crop))
    cv2.imwrite(str(crop), 255 - image)
    weights = tmp_path / "weights"
    with pytest.raises(ExportError, match="is not the data run was trained and validated on"):
        export_run(run, SPEC, weights, data=other)
    assert not (weights / SPEC.name).exists()
    export_run(run, SPEC, weights, data=dataset)  # the run's own data
    assert read_manifest(weights, SPEC.name).provenance["data_digest"]


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


# --- CPU training: pairs, crop store, precision, stopping mid-epoch ----------


@pytest.fixture(scope="module")
def paired_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("toy-pairs"), originals=True)


def test_paired_plan_puts_each_fake_beside_its_original_with_one_augmentation(
    paired_dataset: Path,
):
    samples = select(load_samples(paired_dataset), "train")
    plan = epoch_plan(samples, batch_size=8, seed=1, epoch=0, paired=True)
    fakes_seen = []
    for batch in plan:
        assert len(batch.indices) <= 8
        for k in range(0, len(batch.indices), 2):
            real, fake = samples[batch.indices[k]], samples[batch.indices[k + 1]]
            assert real.label == 0 and fake.label == 1 and fake.original == real.path
            assert batch.aug_keys[k] == batch.aug_keys[k + 1]
            fakes_seen.append(batch.indices[k + 1])
    assert sorted(fakes_seen) == [i for i, s in enumerate(samples) if s.label == 1]
    again = epoch_plan(samples, batch_size=8, seed=1, epoch=0, paired=True)
    assert again == plan
    assert epoch_plan(samples, batch_size=8, seed=1, epoch=1, paired=True) != plan


def test_fakes_without_their_original_are_paired_with_some_real(dataset: Path):
    samples = select(load_samples(dataset), "train")
    plan = epoch_plan(samples, batch_size=8, seed=0, epoch=0, paired=True)
    labels = [samples[i].label for b in plan for i in b.indices]
    assert labels == [0, 1] * (len(labels) // 2)
    assert labels.count(1) == sum(s.label for s in samples)


def test_paired_crops_get_the_same_augmentation(paired_dataset: Path):
    samples = select(load_samples(paired_dataset), "train")
    ds = FaceDataset(samples, 32, (0.5,) * 3, (0.5,) * 3, train=True, seed=4)
    real = next(i for i, s in enumerate(samples) if s.label == 0)
    # The same image under the same key, in two slots: the augmentation
    # depends on the key only.
    for key in range(10, 20):
        a, _ = ds.image(real, slot=key, aug_key=key)
        b, _ = ds.image(real, slot=key + 100, aug_key=key)
        assert np.array_equal(a, b)
    # ... and other keys give other augmentations.
    outcomes = {ds.image(real, slot=11, aug_key=k)[0].tobytes() for k in range(10, 20)}
    assert len(outcomes) > 3


def test_crop_store_decodes_once_and_reads_its_cache(dataset: Path, tmp_path: Path, monkeypatch):
    samples = select(load_samples(dataset), "train")
    paths = [s.path for s in samples]
    first = CropStore(paths, 24, cache_dir=tmp_path, digest="ab" * 32)
    assert first.pixels.shape == (len(paths), 24, 24, 3) and len(list(tmp_path.iterdir())) == 1
    expected = resize_to(read_rgb(paths[3]), None, 24)[0]
    assert np.array_equal(first.get(paths[3], None)[0], expected)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(CropStore, "_decode", staticmethod(no_decoding))
    second = CropStore(paths, 24, cache_dir=tmp_path, digest="ab" * 32)
    assert np.array_equal(second.pixels, first.pixels)
    assert second.get(tmp_path / "elsewhere.png", None) is None


def test_crop_store_scales_keypoints_like_resize(dataset: Path):
    samples = [s for s in select(load_samples(dataset), "train") if s.keypoints]
    store = CropStore([s.path for s in samples], 16)
    _, kp = store.get(samples[0].path, samples[0].keypoints)
    assert kp == resize_to(read_rgb(samples[0].path), samples[0].keypoints, 16)[1]


def test_store_backed_and_disk_backed_datasets_give_the_same_tensors(dataset: Path):
    samples = select(load_samples(dataset), "val")
    store = CropStore([s.path for s in samples], 32)
    a = FaceDataset(samples, 32, SPEC.mean, SPEC.std, train=False)
    b = FaceDataset(samples, 32, SPEC.mean, SPEC.std, train=False, store=store)
    for i in range(len(samples)):
        assert torch.equal(a[i][0], b[i][0])


def test_auto_precision_follows_the_cpu_flags(monkeypatch):
    import ensemble.training.loop as loop

    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(loop, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(TrainingError, match="precision"):
        resolve_precision("fp8", "cpu")


def test_run_records_its_precision_and_pairing(paired_dataset: Path, tmp_path: Path):
    train(
        _config(paired_dataset, tmp_path, epochs=1, precision="bf16", paired=True),
        SPEC,
        progress=False,
    )
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["precision"] == "bf16" and run["paired"] is True and run["status"] == "finished"
    assert run["images_seen"] == 24 and run["images_per_second"] > 0


class StepClock:
    """A clock that moves one minute per reading; optionally sends SIGTERM
    to this process at the n-th reading."""

    def __init__(self, signal_at: int | None = None) -> None:
        self.readings = 0
        self.signal_at = signal_at

    def __call__(self) -> float:
        import os
        import signal

        self.readings += 1
        if self.readings == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return 60.0 * self.readings


@pytest.mark.parametrize("how", ["time budget", "signal"])
def test_run_stopped_mid_epoch_resumes_to_the_same_weights(
    paired_dataset: Path, tmp_path: Path, how: str
):
    settings: dict = dict(
        epochs=2,
        batch_size=4,
        paired=True,
        ema_decay=0.9,
        blackout_prob=0.5,
        checkpoint_minutes=2.0,
    )
    # BatchNorm and dropout: the steps use running statistics and the torch RNG.
    spec = REGISTRY.get("toy_drop")
    settings["member"] = spec.name
    whole = train(
        _config(paired_dataset, tmp_path / "whole", **settings),
        spec,
        progress=False,
        clock=StepClock(),
    )
    cut_config = _config(paired_dataset, tmp_path / "cut", **settings)
    if how == "time budget":
        cut = train(replace(cut_config, time_budget=4.0), spec, progress=False, clock=StepClock())
    else:
        cut = train(cut_config, spec, progress=False, clock=StepClock(signal_at=5))
    assert cut.interrupted and not cut.history
    ckpt = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 0 and 0 < ckpt["step"] < 6
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "interrupted"

    resumed = train(replace(cut_config, resume=True), spec, progress=False, clock=StepClock())
    assert not resumed.interrupted and [h.epoch for h in resumed.history] == [1, 2]
    for a, b in zip(whole.history, resumed.history, strict=True):
        assert (a.train_loss, a.train_acc, a.val_loss) == (b.train_loss, b.train_acc, b.val_loss)
    last_a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    last_b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    for key in ("model", "ema"):
        for k, v in last_a[key].items():
            assert torch.equal(v, last_b[key][k]), (key, k)


def test_mid_epoch_checkpoints_are_written_on_the_interval(paired_dataset: Path, tmp_path: Path):
    seen: list[int] = []
    original = torch.save

    def spy(obj, path, *args, **kwargs):
        if str(path).endswith("last.pt.tmp"):
            seen.append(obj["step"])
        return original(obj, path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "save", spy)
        train(
            _config(
                paired_dataset,
                tmp_path,
                epochs=1,
                batch_size=4,
                paired=True,
                checkpoint_minutes=2.0,
            ),
            SPEC,
            progress=False,
            clock=StepClock(),
        )
    # Six batches, one clock reading a minute per batch: mid-epoch checkpoints,
    # then the end-of-epoch one (step 0 of the next epoch).
    assert len(seen) >= 3 and seen[-1] == 0 and all(0 < s < 6 for s in seen[:-1])


def test_new_run_can_start_from_installed_weights(dataset: Path, tmp_path: Path):
    run = tmp_path / "run"
    train(_config(dataset, run, epochs=1), SPEC, progress=False)
    export_run(run, SPEC, tmp_path / "weights", data=dataset)
    config = _config(
        dataset, tmp_path / "again", epochs=1, lr=1e-12, init_from=tmp_path / "weights"
    )
    again = train(config, SPEC, progress=False)
    first = json.loads((run / "log.json").read_text())[0]
    # With a learning rate too small to move the weights, the new run scores
    # the validation crops as the installed member (int8/fp16 storage aside).
    assert again.history[0].val_auc == pytest.approx(first["val_auc"], abs=0.05)
    fresh = train(_config(dataset, tmp_path / "fresh", epochs=1, lr=1e-12), SPEC, progress=False)
    assert fresh.history[0].val_loss != again.history[0].val_loss
    # run.json and the manifest say what the run started from.
    installed = read_manifest(tmp_path / "weights", SPEC.name).weights_sha256
    init = json.loads((tmp_path / "again" / "run.json").read_text())["init"]
    assert init == {"source": str(tmp_path / "weights"), "weights_sha256": installed}
    assert json.loads((tmp_path / "fresh" / "run.json").read_text())["init"] is None
    export_run(tmp_path / "again", SPEC, tmp_path / "weights2", data=dataset)
    provenance = read_manifest(tmp_path / "weights2", SPEC.name).provenance
    assert provenance["initialized_from"] == init


def test_a_grown_checkpoint_s_origin_reaches_the_manifest_and_survives_resume(
    dataset: Path, tmp_path: Path
):
    run = tmp_path / "run"
    train(_config(dataset, run, epochs=1), SPEC, progress=False)
    grown = tmp_path / "grown.pt"
    origin = {"member": "toy_b", "weights_sha256": "ab" * 32, "seed": 3}
    state = torch.load(run / "best.pt", weights_only=True)["state_dict"]
    torch.save({"member": SPEC.name, "state_dict": state, "grown_from": origin}, grown)
    again = tmp_path / "again"
    train(_config(dataset, again, epochs=1, init_from=grown), SPEC, progress=False)
    assert json.loads((again / "run.json").read_text())["init"]["grown_from"] == origin
    # A resumed run (whose command need not repeat --init-from) keeps it.
    grown.unlink()
    train(_config(dataset, again, epochs=1, resume=True), SPEC, progress=False)
    assert json.loads((again / "run.json").read_text())["init"]["grown_from"] == origin
    export_run(again, SPEC, tmp_path / "weights", data=dataset)
    manifest = read_manifest(tmp_path / "weights", SPEC.name)
    assert manifest.provenance["initialized_from"]["grown_from"] == origin


def test_a_run_from_before_the_init_record_is_described_at_export_and_says_so(
    dataset: Path, tmp_path: Path
):
    run = tmp_path / "run"
    train(_config(dataset, run, epochs=1), SPEC, progress=False)
    export_run(run, SPEC, tmp_path / "weights", data=dataset)
    again = tmp_path / "again"
    train(_config(dataset, again, epochs=1, init_from=tmp_path / "weights"), SPEC, progress=False)
    info = json.loads((again / "run.json").read_text())
    del info["init"]  # as such runs wrote it
    (again / "run.json").write_text(json.dumps(info))
    export_run(again, SPEC, tmp_path / "weights2", data=dataset)
    init = read_manifest(tmp_path / "weights2", SPEC.name).provenance["initialized_from"]
    assert init["source"] == str(tmp_path / "weights")
    assert init["described_at_export"] is True
    assert init["weights_sha256"] == read_manifest(tmp_path / "weights", SPEC.name).weights_sha256
    # Resumed, such a run keeps its first command's source, undescribed.
    (again / "run.json").write_text(json.dumps(info))
    train(_config(dataset, again, epochs=1, resume=True), SPEC, progress=False)
    resumed = json.loads((again / "run.json").read_text())["init"]
    assert resumed == {"source": str(tmp_path / "weights"), "described": False}


def test_new_run_can_start_from_another_run_without_exporting_it(dataset: Path, tmp_path: Path):
    run = tmp_path / "run"
    train(_config(dataset, run, epochs=1), SPEC, progress=False)
    first = json.loads((run / "log.json").read_text())[0]
    validated = torch.load(run / "best.pt", weights_only=True)["state_dict"]
    # The run folder (its best.pt) and the checkpoint files themselves; last.pt
    # starts from its EMA, which is what best.pt holds after the one epoch.
    for source in (run, run / "best.pt", run / "last.pt"):
        model = initial_model(SPEC, source)
        for key, value in model.state_dict().items():
            assert torch.equal(value, validated[key]), (source, key)
    again = train(
        _config(dataset, tmp_path / "again", epochs=1, lr=1e-12, init_from=run),
        SPEC,
        progress=False,
    )
    # Nothing moves at this learning rate: the new run validates as the old.
    assert again.history[0].val_auc == pytest.approx(first["val_auc"], abs=1e-6)
    assert again.history[0].val_loss == pytest.approx(first["val_loss"], abs=1e-4)


def test_init_from_refuses_what_is_not_this_member_s_checkpoint(dataset: Path, tmp_path: Path):
    run = tmp_path / "run"
    train(_config(dataset, run, epochs=1), SPEC, progress=False)
    with pytest.raises(TrainingError, match="toy_a weights, not toy_b"):
        initial_model(REGISTRY.get("toy_b"), run)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="not a training checkpoint"):
        initial_model(SPEC, junk)
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 1}, empty)
    with pytest.raises(TrainingError, match="no weights in it"):
        initial_model(SPEC, empty)


def test_run_stopped_after_an_epoch_s_last_batch_validates_that_epoch_on_resume(
    paired_dataset: Path, tmp_path: Path
):
    spec = REGISTRY.get("toy_drop")
    settings: dict = dict(
        member=spec.name, epochs=2, batch_size=4, paired=True, checkpoint_minutes=100.0
    )
    whole = train(
        _config(paired_dataset, tmp_path / "whole", **settings),
        spec,
        progress=False,
        clock=StepClock(),
    )
    # One clock reading a minute: the sixth and last batch of epoch 1 ends
    # 8 minutes in; with the slowest step as margin, a budget of 8.5 minutes
    # stops there, before validating.
    cut_config = _config(paired_dataset, tmp_path / "cut", **settings)
    cut = train(replace(cut_config, time_budget=8.5), spec, progress=False, clock=StepClock())
    ckpt = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert cut.interrupted and not cut.history and (ckpt["epoch"], ckpt["step"]) == (0, 6)
    resumed = train(replace(cut_config, resume=True), spec, progress=False, clock=StepClock())
    assert [(h.train_loss, h.val_loss) for h in resumed.history] == [
        (h.train_loss, h.val_loss) for h in whole.history
    ]


def test_a_session_s_first_validation_is_in_the_budget_s_margin(
    paired_dataset: Path, tmp_path: Path
) -> None:
    """Before a session had validated once, the last batch's margin was the
    slowest step alone: a budget nearly spent still started the validation
    (minutes for B7 on two cores) past its end. Now it is estimated from the
    validation's batches, and a resumed run keeps the last one's seconds."""
    spec = REGISTRY.get("toy_drop")
    settings: dict = dict(
        member=spec.name, epochs=2, batch_size=4, paired=True, checkpoint_minutes=100.0
    )
    val_batches = math.ceil(len(select(load_samples(paired_dataset), "val")) / 4)
    assert val_batches >= 3  # so the estimate (a third of a step each) is a minute or more
    # As above: epoch 1's last batch ends 8 minutes in, its slowest step took
    # a minute; 9.5 minutes left room for the step, not for the validation.
    cut_config = _config(paired_dataset, tmp_path / "cut", **settings)
    cut = train(replace(cut_config, time_budget=9.5), spec, progress=False, clock=StepClock())
    ckpt = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert cut.interrupted and not cut.history and (ckpt["epoch"], ckpt["step"]) == (0, 6)
    assert ckpt["validation_seconds"] == 0.0
    # Resumed with room for one epoch: it validates, and the checkpoint it
    # leaves in epoch 2 holds that validation's seconds for the next session.
    resumed = train(
        replace(cut_config, resume=True, time_budget=12.5), spec, progress=False, clock=StepClock()
    )
    ckpt = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert resumed.interrupted and len(resumed.history) == 1 and ckpt["epoch"] == 1
    assert ckpt["validation_seconds"] > 0.0


def test_paired_batches_refuse_sbi_and_data_without_fakes(paired_dataset: Path, tmp_path: Path):
    with pytest.raises(TrainingError, match="SBI"):
        train(
            _config(paired_dataset, tmp_path / "a", paired=True, sbi_prob=0.3), SPEC, progress=False
        )
    reals = tmp_path / "reals"
    write_dataset(reals)
    rows = (reals / "metadata.csv").read_text().splitlines()
    (reals / "metadata.csv").write_text(
        "\n".join([rows[0]] + [r for r in rows[1:] if ",REAL," in r]) + "\n"
    )
    with pytest.raises(TrainingError, match="fake"):
        train(_config(reals, tmp_path / "b", paired=True, sbi_prob=0.3), SPEC, progress=False)


def test_a_new_run_never_overwrites_a_run_folder_with_a_checkpoint(dataset: Path, tmp_path: Path):
    train(_config(dataset, tmp_path, epochs=1), SPEC, progress=False)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(TrainingError, match="--resume"):
        train(_config(dataset, tmp_path, epochs=1), SPEC, progress=False)
    assert (tmp_path / "last.pt").read_bytes() == before


def test_an_unreadable_crop_cache_is_decoded_again(dataset: Path, tmp_path: Path):
    paths = [s.path for s in select(load_samples(dataset), "val")]
    first = CropStore(paths, 16, cache_dir=tmp_path, digest="cd" * 32)
    (cache,) = tmp_path.glob("*.npz")
    cache.write_bytes(b"not a zip")
    again = CropStore(paths, 16, cache_dir=tmp_path, digest="cd" * 32)
    assert np.array_equal(again.pixels, first.pixels)


def test_a_limited_paired_run_keeps_its_pairs_and_exports(paired_dataset: Path, tmp_path: Path):
    run = tmp_path / "run"
    train(_config(paired_dataset, run, epochs=1, limit=12, paired=True), SPEC, progress=False)
    info = json.loads((run / "run.json").read_text())
    assert info["limit_keeps_pairs"] is True
    assert info["n_train"] == {"real": 6, "fake": 6}
    # Export draws the same samples again, or the data digests would differ.
    export_run(run, SPEC, tmp_path / "weights", data=paired_dataset)


def test_a_resumed_limited_run_draws_its_samples_as_it_was_first_drawn(
    paired_dataset: Path, tmp_path: Path
):
    run = tmp_path / "run"
    config = _config(paired_dataset, run, epochs=1, limit=12, paired=True, time_budget=2.0)
    assert train(config, SPEC, progress=False, clock=StepClock()).interrupted
    info_path = run / "run.json"
    info = json.loads(info_path.read_text())
    # As a run from before the flag would say: reals and fakes drawn apart,
    # which is not what this run's checkpoint was trained on.
    info_path.write_text(json.dumps({k: v for k, v in info.items() if k != "limit_keeps_pairs"}))
    again = replace(config, resume=True, time_budget=None)
    with pytest.raises(TrainingError, match=r"other settings.*data"):
        train(again, SPEC, progress=False, clock=StepClock())
    info_path.write_text(json.dumps(info))
    assert not train(again, SPEC, progress=False, clock=StepClock()).interrupted


def test_init_from_a_published_checkpoint_reads_it_as_an_import_would(tmp_path: Path):
    """A selimsef-style file (DataParallel's 'module.' prefix, a numpy number
    beside the weights) was refused: neither was understood by --init-from."""
    import numpy as np

    torch.manual_seed(4)
    published = SPEC.build()
    path = tmp_path / "final_111_DeepFakeClassifier.pth"
    state = {f"module.{k}": v for k, v in published.state_dict().items()}
    torch.save({"epoch": 40, "state_dict": state, "bce_best": np.float64(0.2)}, path)
    model = initial_model(SPEC, path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, published.state_dict()[key]), key


def test_the_best_checkpoint_and_its_predictions_are_replaced_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop while best.pt was written left it beside the last epoch's
    predictions, which --summary and --candidate then described; a stop
    while the predictions were written left them cut short."""
    from ensemble.training import runfiles
    from ensemble.training.data import Sample

    samples = [Sample(tmp_path / f"{i}.png", i % 2, "val") for i in range(4)]
    best, predictions = tmp_path / "best.pt", tmp_path / "val_predictions.csv"
    runfiles.save_best({"epoch": 1}, best, predictions, samples, np.array([0.1, 0.2, 0.3, 0.4]))
    first = predictions.read_text()
    assert first.splitlines()[1].endswith(",0,0.100000")

    def interrupted(obj: object, path: object) -> None:
        raise KeyboardInterrupt  # the session's end, mid-checkpoint

    monkeypatch.setattr(runfiles.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runfiles.save_best({"epoch": 2}, best, predictions, samples, np.zeros(4))
    assert predictions.read_text() == first
    assert torch.load(best)["epoch"] == 1


def test_a_damaged_keypoint_cache_is_detected_again_not_a_crash(tmp_path: Path) -> None:
    from ensemble.training.data import Sample, attach_keypoints

    crop = tmp_path / "a.png"
    cv2.imwrite(str(crop), np.zeros((8, 8, 3), np.uint8))
    cache = tmp_path / "keypoints.json"
    cache.write_text('{"cut sh')  # a stop mid-write, before writes were atomic
    seen: list[int] = []

    def detect(images: list[object]) -> list[None]:
        seen.append(len(images))
        return [None] * len(images)

    assert attach_keypoints([Sample(crop, 0, "train")], detect, cache)[0].keypoints is None
    assert seen == [1] and json.loads(cache.read_text()) == {f"{crop}:{crop.stat().st_size}": None}
    assert not list(tmp_path.glob("*.part"))
