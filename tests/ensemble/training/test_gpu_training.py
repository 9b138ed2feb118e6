"""The device-side training of ``ensemble.training.gpu``, run on the CPU:
the same code trains on a CUDA device (where it was run on an H200)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble.align import ssim_difference
from ensemble.errors import TrainingError
from ensemble.registry import tiny_spec
from ensemble.training import augment as aug
from ensemble.training import export, gpu
from ensemble.training.data import load_samples, select
from ensemble.training.export import ExportError, export_run, roundtrip
from tests.training_toys import write_dataset

CPU = torch.device("cpu")
SPEC = tiny_spec("tiny", input_size=32)
RECIPE = gpu.GpuRecipe(input_size=32, batch_size=8, lr=1e-3, blackout_prob=0.5, evals=3)


def _face_pair(size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth 'real' crop and a 'fake' that differs in one square only."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    base = np.stack([120 + 60 * np.sin(6 * xx + c) * np.cos(4 * yy) for c in range(3)], -1)
    real = np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)
    fake = real.copy()
    patch = rng.integers(0, 255, (16, 16, 3))
    fake[24:40, 20:36] = patch
    as_t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].contiguous()  # noqa: E731
    return as_t(real), as_t(fake)


def _draw(n: int, seed: int = 0, blackout: float = 0.0) -> gpu.AugDraw:
    gen = torch.Generator().manual_seed(seed)
    return gpu.draw_augmentation(n, gen, CPU, blackout)


def test_ssim_map_matches_the_cpu_blackout_map_inside_the_border() -> None:
    real, fake = _face_pair()
    ours = gpu.ssim_difference_map(real.float() / 255, fake.float() / 255)[0, 0].numpy()
    cpu = ssim_difference(real[0].permute(1, 2, 0).numpy(), fake[0].permute(1, 2, 0).numpy())
    inner = slice(gpu.SSIM_WINDOW, -gpu.SSIM_WINDOW)
    assert np.abs(ours[inner, inner] - cpu[inner, inner]).max() < 1e-3
    assert ours[30, 28] > 0.2 > ours[5, 5]


def test_blackout_stays_inside_the_manipulated_square_and_takes_part_of_it() -> None:
    real, fake = _face_pair()
    draw = _draw(1, blackout=1.0)
    out, used = gpu.apply_blackout(fake, real, draw)
    assert used.tolist() == [True]
    black = (out[0] == 0).all(0) & ~(fake[0] == 0).all(0)
    ys, xs = torch.nonzero(black, as_tuple=True)
    # The opened SSIM region reaches a few pixels past the square (7x7 window).
    assert ys.min() >= 24 - 4 and ys.max() < 40 + 4 and xs.min() >= 20 - 4 and xs.max() < 36 + 4
    assert 20 < black.sum() < 0.9 * 16 * 16 * 1.5


def test_no_blackout_when_not_drawn_or_when_the_pair_is_not_one_frame() -> None:
    real, fake = _face_pair()
    out, used = gpu.apply_blackout(fake, real, _draw(1, blackout=0.0))
    assert torch.equal(out, fake) and used.tolist() == [False]
    unrelated = torch.flip(real, dims=(-1, -2)).roll(17, dims=-1)
    unrelated = 255 - unrelated
    out, used = gpu.apply_blackout(unrelated, real, _draw(1, blackout=1.0))
    assert used.tolist() == [False] and torch.equal(out, unrelated)


PROBABILITIES = ("P_AFFINE", "P_JPEG", "P_DOWNSCALE", "P_FLIP", "P_COLOUR", "P_NOISE", "P_BLUR")


def _every_augmentation(monkeypatch: pytest.MonkeyPatch, p: float) -> None:
    for name in (*PROBABILITIES, "P_CUTOUT"):
        monkeypatch.setattr(aug, name, p)


def test_augmentation_off_is_the_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    _every_augmentation(monkeypatch, 0.0)
    real, fake = _face_pair()
    images = torch.cat([real, fake])
    gen = torch.Generator().manual_seed(1)
    out = gpu.apply_augmentation(images, _draw(2), torch.arange(2), gen, gpu.JpegCodec())
    assert torch.allclose(out, images.float() / 255, atol=1e-5)


def test_a_pair_shares_every_augmentation(monkeypatch: pytest.MonkeyPatch) -> None:
    _every_augmentation(monkeypatch, 1.0)
    real, _ = _face_pair()
    other, _ = _face_pair(seed=3)
    # Pair 0 is (real, real); pair 1 is (other, other): each pair's two crops
    # are equal, so equal outputs mean one draw per pair.
    images = torch.cat([real, other, real, other])
    which = torch.tensor([0, 1, 0, 1])
    gen = torch.Generator().manual_seed(2)
    out = gpu.apply_augmentation(images, _draw(2, seed=5), which, gen, gpu.JpegCodec())
    assert torch.allclose(out[0], out[2], atol=1e-6)
    assert torch.allclose(out[1], out[3], atol=1e-6)
    assert (out[0] - images[0].float() / 255).abs().mean() > 0.02
    assert out.shape == (4, 3, 64, 64) and out.min() >= 0 and out.max() <= 1


def test_jpeg_codec_round_trips_and_switches_itself_off_on_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real, _ = _face_pair()
    codec = gpu.JpegCodec()
    out = codec(real, 40)
    assert out.shape == real.shape and out.dtype == torch.uint8
    assert 0 < (out.float() - real.float()).abs().mean() < 10
    import torchvision.io

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no nvjpeg here")

    monkeypatch.setattr(torchvision.io, "encode_jpeg", broken)
    assert torch.equal(codec(real, 40), real)
    assert not codec.enabled and "no nvjpeg here" in codec.note


def test_schedule_warms_up_then_anneals() -> None:
    f = gpu.schedule_factor
    assert f(0.0, 0.1, 0.01) == pytest.approx(0.01)
    assert f(0.05, 0.1, 0.01) == pytest.approx(0.5)
    assert f(0.1, 0.1, 0.01) == pytest.approx(1.0)
    assert f(0.55, 0.1, 0.01) == pytest.approx(0.505)
    assert f(1.0, 0.1, 0.01) == pytest.approx(0.01)
    assert f(2.0, 0.1, 0.01) == pytest.approx(0.01)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data", n_train=40, n_val=20, size=32, originals=True)


def _train(data: Path, out: Path, **kwargs: object) -> dict:
    options: dict = {"seconds": 60.0, "epochs": 3.0, "device": "cpu", "workers": 1}
    options.update(kwargs)
    return gpu.train_gpu(SPEC, data, out, recipe=RECIPE, **options)


def test_lockstep_runs_see_the_same_images_and_differ_by_the_blackout(
    dataset: Path, tmp_path: Path
) -> None:
    info = _train(dataset, tmp_path / "run", compare_blackout=True)
    assert info["images_seen"] == 3 * 40 and info["steps"] == 3 * 5
    runs = info["runs"]
    assert set(runs) == {"blackout", "no_blackout"}
    a, b = runs["blackout"]["history"], runs["no_blackout"]["history"]
    assert [r["images_seen"] for r in a] == [r["images_seen"] for r in b]
    assert a[-1]["point"] == "end" and len(a) >= 2
    assert runs["blackout"]["blacked_out_fakes"] > 0
    assert runs["no_blackout"]["blacked_out_fakes"] == 0
    assert a[-1]["train_loss"] != b[-1]["train_loss"]
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["runs"]["blackout"]["best"] == runs["blackout"]["best"]


def test_the_image_budget_or_the_clock_ends_a_run(dataset: Path, tmp_path: Path) -> None:
    info = _train(dataset, tmp_path / "a", epochs=2.0)
    assert info["images_seen"] == 2 * 40
    ticks = iter(range(10_000))
    info = _train(dataset, tmp_path / "b", epochs=100.0, seconds=7.5, clock=lambda: next(ticks))
    # One tick per step plus the evaluations' reads: far fewer than 100 epochs' steps.
    assert 0 < info["steps"] < 8


def test_a_dataset_without_pairs_is_refused(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", n_train=8, n_val=4, size=32, originals=False)
    with pytest.raises(TrainingError, match="no real/fake pairs"):
        _train(data, tmp_path / "run")


def test_transfer_unpacks_to_a_run_that_exports_with_the_measured_reference(
    dataset: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    info = _train(dataset, run, epochs=4.0)
    record = info["runs"]["main"]
    transfer = run / gpu.TRANSFER / "main"
    files = sorted(p.name for p in transfer.iterdir())
    assert f"{SPEC.name}-{gpu.TRANSFER_MANIFEST}" in files
    assert all(p.stat().st_size <= gpu.MAX_TRANSFER_FILE for p in transfer.iterdir())

    unpacked = gpu.unpack(transfer, tmp_path / "unpacked", run / "run.json", spec=SPEC)
    best = torch.load(run / "best-main.pt", weights_only=True)
    again = torch.load(unpacked / "best.pt", weights_only=True)
    expected = roundtrip(best["state_dict"], record["transferred_as"])
    for key, value in expected.items():
        assert torch.allclose(again["state_dict"][key], value), key
    assert again["input_size"] == RECIPE.input_size

    report = export_run(unpacked, SPEC, tmp_path / "weights", data=dataset)
    if record["transferred_as"] == "int8":
        assert report.auc["fp32_before_transfer"] == record["val_full_precision"]["auc"]
    manifest = json.loads((tmp_path / "weights" / SPEC.name / "manifest.json").read_text())
    assert (
        manifest["provenance"]["training"]["transfer"]["quantization"] == (record["transferred_as"])
    )


def test_unpack_rebuilds_only_the_keys_left_out_on_purpose(tmp_path: Path) -> None:
    state = SPEC.build().state_dict()
    tensors = gpu.transfer_state(state, "fp16", skip=("fc.",))
    info = {"member": SPEC.name, "input_size": 32, "quantization": "fp16"}
    gpu.write_transfer(
        tmp_path / "ok", SPEC.name, tensors, {**info, "untransferred_prefixes": ["fc."]}
    )
    out = gpu.unpack(tmp_path / "ok", tmp_path / "run", spec=SPEC)
    assert set(torch.load(out / "best.pt", weights_only=True)["state_dict"]) == set(state)
    gpu.write_transfer(tmp_path / "bad", SPEC.name, tensors, {**info, "untransferred_prefixes": []})
    with pytest.raises(TrainingError, match="lacks 2 keys"):
        gpu.unpack(tmp_path / "bad", tmp_path / "run2", spec=SPEC)


def test_write_transfer_splits_files_under_the_limit(tmp_path: Path) -> None:
    tensors = {f"w{i}": torch.zeros(64, 1024) for i in range(6)}  # 256 KiB each
    paths = gpu.write_transfer(tmp_path, "m", tensors, {}, max_file_bytes=600 * 1024)
    shards = [p for p in paths if p.suffix == ".safetensors"]
    assert len(shards) == 3 and all(p.stat().st_size <= 600 * 1024 for p in shards)


def test_collect_sends_within_the_limits_and_the_rest_next_time(tmp_path: Path) -> None:
    source = tmp_path / "out"
    (source / "m").mkdir(parents=True)
    for i in range(4):
        (source / "m" / f"m-{i}.safetensors").write_bytes(b"x" * 1000)
    (source / "m" / "m-transfer.json").write_text("{}")
    sent = tmp_path / "sent.txt"
    first = gpu.collect(source, tmp_path / "dest1", sent, max_bytes=2500, max_files=8)
    assert Path(first[0]).name == "m-transfer.json" and len(first) == 3
    assert sorted(p.name for p in (tmp_path / "dest1").iterdir())[0] == "m__m-0.safetensors"
    second = gpu.collect(source, tmp_path / "dest2", sent, max_bytes=10_000, max_files=8)
    assert len(second) == 2 and not set(first) & set(second)


def test_partial_upload_trains_on_the_rows_present(dataset: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "copy"
    shutil.copytree(dataset, data)
    for path in sorted((data / "fake").iterdir())[:3]:
        path.unlink()
    csv_path = gpu._present_rows_csv(data)
    rows = csv_path.read_text().splitlines()
    assert len(rows) == 1 + 60 - 3
    info = _train(csv_path, tmp_path / "run", epochs=1.0)
    assert info["n_pairs"] < 20


def test_recipes_cover_the_members_at_their_input_size() -> None:
    from ensemble.registry import REGISTRY

    for name, recipe in gpu.GPU_RECIPES.items():
        assert name in REGISTRY
        assert recipe.batch_size % 2 == 0
    assert gpu.GPU_RECIPES["effnet_b7"].blackout_prob > 0
    assert gpu.gpu_recipe(SPEC) == replace(gpu.DEFAULT_GPU_RECIPE, input_size=32)


def test_int8_weights_round_to_themselves() -> None:
    """What lets an export of transferred int8 weights skip its int8 pass."""
    torch.manual_seed(0)
    state = {"w": torch.randn(16, 8, 3, 3), "b": torch.randn(16)}
    once = roundtrip(state, "int8")
    twice = roundtrip(once, "int8")
    for key in state:
        assert torch.allclose(once[key], twice[key], rtol=0, atol=1e-6), key


def test_export_refuses_int8_against_the_transferred_reference(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        # The device sends int8 whenever the AUC moves by at most the tolerance.
        m.setattr(export, "AUC_TOLERANCE", 1.0)
        _train(dataset, run, epochs=4.0)
    transfer = run / gpu.TRANSFER / "main"
    manifest_path = next(transfer.glob(f"*-{gpu.TRANSFER_MANIFEST}"))
    info = json.loads(manifest_path.read_text())
    assert info["quantization"] == "int8"
    # As if full precision had measured far better than int8 on the device.
    info["val_full_precision"]["auc"] = info["val_int8"]["auc"] - 0.2
    manifest_path.write_text(json.dumps(info))
    unpacked = gpu.unpack(transfer, tmp_path / "unpacked", run / "run.json", spec=SPEC)
    report = export_run(unpacked, SPEC, tmp_path / "weights", data=dataset)
    assert report.quantization == "fp16"
    assert report.auc["fp16"] is not None
    assert report.auc["fp32_before_transfer"] == pytest.approx(info["val_int8"]["auc"] - 0.2)


def test_a_run_can_start_from_installed_weights(dataset: Path, tmp_path: Path) -> None:
    from ensemble.weights import save_weights

    torch.manual_seed(7)
    start = SPEC.build().state_dict()
    installed = save_weights(start, SPEC, tmp_path / "weights", quantization="fp32")
    model = gpu._build(SPEC, RECIPE, CPU, seed=0, init_from=tmp_path / "weights")
    for key, value in start.items():
        assert torch.equal(model.state_dict()[key], value), key
    info = _train(dataset, tmp_path / "run", epochs=1.0, init_from=tmp_path / "weights")
    assert info["config"]["init_from"] == str(tmp_path / "weights")
    # Described on the machine that trained (the path means nothing elsewhere).
    assert info["init"] == {
        "source": str(tmp_path / "weights"),
        "weights_sha256": installed.weights_sha256,
    }


def test_a_transfer_names_its_data_and_unpacks_only_with_that_data(
    dataset: Path, tmp_path: Path
) -> None:
    from ensemble.training.data import data_digest

    run = tmp_path / "run"
    info = _train(dataset, run, epochs=1.0)
    samples = load_samples(dataset)
    assert info["data_digest"] == data_digest(select(samples, "train") + select(samples, "val"))
    transfer = run / gpu.TRANSFER / "main"
    other = write_dataset(tmp_path / "other", n_train=8, n_val=4, size=32, originals=True)
    with pytest.raises(TrainingError, match="not the data the transfer was trained on"):
        gpu.unpack(transfer, tmp_path / "u1", run / "run.json", spec=SPEC, data=other)
    gpu.unpack(transfer, tmp_path / "u2", run / "run.json", spec=SPEC, data=dataset)
    # The transfer itself names its data: run.json is not needed for it.
    bare = gpu.unpack(transfer, tmp_path / "u3", spec=SPEC)
    assert json.loads((bare / "run.json").read_text())["data_digest"] == info["data_digest"]
    with pytest.raises(TrainingError, match="does not exist"):
        gpu.unpack(transfer, tmp_path / "u4", tmp_path / "typo.json", spec=SPEC)
    # A run folder that does not name its data is not exported.
    (bare / "run.json").write_text(json.dumps({"transfer": {"quantization": "fp16"}}))
    with pytest.raises(ExportError, match="does not name the data"):
        export_run(bare, SPEC, tmp_path / "weights", data=dataset)
    assert not (tmp_path / "weights").exists()


def test_an_int8_transfer_is_judged_by_the_lent_machine_s_own_comparison(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        # The device sends int8 whenever the AUC moves by at most the tolerance.
        m.setattr(export, "AUC_TOLERANCE", 1.0)
        _train(dataset, run, epochs=4.0)
    transfer = run / gpu.TRANSFER / "main"
    manifest_path = next(transfer.glob(f"*-{gpu.TRANSFER_MANIFEST}"))
    info = json.loads(manifest_path.read_text())
    assert info["quantization"] == "int8"
    # Both figures there agree, but neither is what these samples give here
    # (as a --val-limit subset would): int8 stays.
    info["val_full_precision"]["auc"] = info["val_int8"]["auc"] = 0.3
    manifest_path.write_text(json.dumps(info))
    unpacked = gpu.unpack(transfer, tmp_path / "unpacked", run / "run.json", spec=SPEC)
    report = export_run(unpacked, SPEC, tmp_path / "weights", data=dataset, val_limit=8)
    assert report.quantization == "int8"
    assert report.auc["fp32_before_transfer"] == report.auc["int8_before_transfer"] == 0.3
