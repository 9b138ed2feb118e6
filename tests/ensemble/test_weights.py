from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble.crops import CropPolicy
from ensemble.errors import (
    IncompatibleCheckpointError,
    MissingWeightsError,
    WeightsError,
    WeightsIntegrityError,
)
from ensemble.members import load_member
from ensemble.registry import Registry, tiny_spec
from ensemble.weights import (
    MANIFEST_NAME,
    import_checkpoint,
    installed_stamp,
    load_model,
    read_manifest,
    recalibrate_manifest,
    save_weights,
)


@pytest.fixture
def registry() -> Registry:
    r = Registry()
    r.register(tiny_spec("tiny"))
    return r


def test_saved_weights_load_back_strictly_and_hash_checked(
    tmp_path: Path, registry: Registry
) -> None:
    spec = registry.get("tiny")
    torch.manual_seed(1)
    model = spec.build()
    manifest = save_weights(
        model.state_dict(),
        spec,
        tmp_path,
        dtype=torch.float32,
        temperature=1.7,
        bias=-0.3,
        provenance={"data": "unit test"},
        max_shard_bytes=2048,
    )
    assert len(manifest.files) > 1  # sharded
    member = load_member("tiny", tmp_path, registry=registry)
    assert (member.temperature, member.bias) == (1.7, -0.3)
    assert member.weights_sha256 == manifest.weights_sha256
    for k, v in model.state_dict().items():
        assert torch.equal(member.model.state_dict()[k].cpu(), v), k
    data = json.loads((tmp_path / "tiny" / MANIFEST_NAME).read_text())
    assert {
        "architecture",
        "files",
        "input_size",
        "mean",
        "std",
        "temperature",
        "bias",
        "threshold",
        "provenance",
        "metrics",
    } <= set(data)


def test_fp16_export_loads_as_float32(tmp_path: Path, registry: Registry) -> None:
    spec = registry.get("tiny")
    save_weights(spec.build().state_dict(), spec, tmp_path)
    model, _ = load_model(spec, tmp_path)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_missing_weights_say_how_to_install_them(tmp_path: Path, registry: Registry) -> None:
    with pytest.raises(MissingWeightsError, match="import_weights --member tiny"):
        load_member("tiny", tmp_path, registry=registry)


def test_weight_files_get_the_mode_of_any_new_file(tmp_path: Path, registry: Registry) -> None:
    # safetensors writes owner-only files; a worker running as another user
    # must still read what an export installed. The manifest shows the mode
    # a new file gets here (the umask's).
    spec = registry.get("tiny")
    manifest = save_weights(spec.build().state_dict(), spec, tmp_path, max_shard_bytes=2048)
    folder = tmp_path / "tiny"
    want = (folder / MANIFEST_NAME).stat().st_mode & 0o777
    assert want & 0o044  # the test means something only under a usual umask
    for f in manifest.files:
        assert (folder / f.path).stat().st_mode & 0o777 == want, f.path


def test_tampered_shard_is_refused(tmp_path: Path, registry: Registry) -> None:
    spec = registry.get("tiny")
    manifest = save_weights(spec.build().state_dict(), spec, tmp_path)
    shard = tmp_path / "tiny" / manifest.files[0].path
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match="damaged or was replaced"):
        load_member("tiny", tmp_path, registry=registry)


def test_import_accepts_dataparallel_checkpoint_under_state_dict(
    tmp_path: Path, registry: Registry
) -> None:
    spec = registry.get("tiny")
    torch.manual_seed(2)
    model = spec.build()
    ckpt = tmp_path / "published.pth"
    torch.save(
        {"epoch": 7, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt
    )
    manifest = import_checkpoint(spec, ckpt, tmp_path / "weights", input_size=96)
    assert manifest.format == "pytorch" and manifest.input_size == 96
    assert manifest.provenance["source"] == "imported"
    member = load_member("tiny", tmp_path / "weights", registry=registry)
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        assert torch.allclose(member.model(x), model.eval()(x))


def _numpy1_pickle(ckpt: Path) -> None:
    """Rewrite a legacy-format checkpoint's numpy scalars the way numpy 1.x
    pickled them (``numpy.core.multiarray``), as in checkpoints published
    before numpy 2."""
    data = ckpt.read_bytes()
    assert b"numpy._core.multiarray\nscalar" in data
    ckpt.write_bytes(data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))


@pytest.mark.parametrize("numpy_names", ["numpy 2", "numpy 1"])
@pytest.mark.parametrize(
    ("layout", "wrap"),
    [
        # selimsef's train_classifier.py: bce_best is scikit-learn's log loss, a numpy.float64.
        ("selimsef", lambda sd: {"epoch": 40, "state_dict": sd, "bce_best": np.float64(0.21)}),
        # polimi's train_binclass.py bestval.pth: the weights under "net", numbers beside.
        ("polimi", lambda sd: {"net": sd, "iteration": 9000, "val_loss": np.float32(0.3)}),
    ],
)
def test_import_reads_published_checkpoints_with_numpy_numbers_beside_the_weights(
    tmp_path: Path, registry: Registry, layout: str, wrap, numpy_names: str
) -> None:
    """torch's weights_only unpickler refused numpy scalars, so a checkpoint
    saved by selimsef's or polimi's training script could not be imported."""
    spec = registry.get("tiny")
    torch.manual_seed(3)
    model = spec.build()
    ckpt = tmp_path / f"{layout}.pth"
    torch.save(
        wrap(model.state_dict()), ckpt, _use_new_zipfile_serialization=numpy_names != "numpy 1"
    )
    if numpy_names == "numpy 1":
        _numpy1_pickle(ckpt)
    import_checkpoint(spec, ckpt, tmp_path / "weights")
    member = load_member("tiny", tmp_path / "weights", registry=registry)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(member.model(x), model.eval()(x))


def test_numpy_arrays_in_a_checkpoint_stay_refused(tmp_path: Path, registry: Registry) -> None:
    """Only numpy scalars are allowed beside tensors, not numpy's other globals."""
    ckpt = tmp_path / "arrays.pth"
    torch.save({"state_dict": registry.get("tiny").build().state_dict(), "a": np.zeros(3)}, ckpt)
    with pytest.raises(IncompatibleCheckpointError, match="weights_only"):
        import_checkpoint(registry.get("tiny"), ckpt, tmp_path / "weights")


def test_import_refuses_an_input_size_that_is_not_positive(
    tmp_path: Path, registry: Registry
) -> None:
    ckpt = tmp_path / "published.pth"
    torch.save(registry.get("tiny").build().state_dict(), ckpt)
    with pytest.raises(IncompatibleCheckpointError, match="positive number of pixels"):
        import_checkpoint(registry.get("tiny"), ckpt, tmp_path / "weights", input_size=-5)
    assert not (tmp_path / "weights").exists()


def test_an_unreadable_weights_file_is_a_weights_error(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard the worker may not read (safetensors writes 0600; ``tar x``
    keeps it) raised PermissionError: every analysis failed as the site's
    internal error instead of "models unavailable"."""
    spec = registry.get("tiny")
    save_weights(spec.build().state_dict(), spec, tmp_path)
    real = Path.read_bytes

    def refuse(self: Path) -> bytes:
        if self.suffix == ".safetensors" or (
            self.name == MANIFEST_NAME and self.parent.name == "x"
        ):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(WeightsError, match="cannot be read: Permission denied"):
        load_member("tiny", tmp_path, registry=registry)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / MANIFEST_NAME).write_text("{}")
    with pytest.raises(WeightsError, match="cannot be read: Permission denied"):
        installed_stamp(tmp_path, ["tiny", "x"])


def test_import_of_wrong_architecture_names_the_mismatch_and_writes_nothing(
    tmp_path: Path, registry: Registry
) -> None:
    ckpt = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(1, 8), "extra.bias": torch.zeros(3)}, ckpt)
    with pytest.raises(IncompatibleCheckpointError, match=r"missing.*unexpected.*wrong shape"):
        import_checkpoint(registry.get("tiny"), ckpt, tmp_path / "weights")
    assert not (tmp_path / "weights").exists()


class Evil:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_import_refuses_checkpoints_that_need_arbitrary_unpickling(
    tmp_path: Path, registry: Registry
) -> None:
    ckpt = tmp_path / "evil.pth"
    with ckpt.open("wb") as fh:
        pickle.dump({"state_dict": Evil()}, fh)
    with pytest.raises(IncompatibleCheckpointError, match="weights_only"):
        import_checkpoint(registry.get("tiny"), ckpt, tmp_path / "weights")


def test_import_records_the_published_checkpoints_input_size(tmp_path: Path) -> None:
    import dataclasses

    spec = dataclasses.replace(tiny_spec("tiny"), checkpoint_input_size=80)
    registry = Registry()
    registry.register(spec)
    ckpt = tmp_path / "published.pth"
    torch.save(spec.build().state_dict(), ckpt)
    assert import_checkpoint(spec, ckpt, tmp_path / "weights").input_size == 80
    assert import_checkpoint(spec, ckpt, tmp_path / "w2", input_size=72).input_size == 72


def test_manifest_crop_policy_reaches_the_loaded_member(tmp_path: Path, registry: Registry) -> None:
    spec = registry.get("tiny")
    save_weights(spec.build().state_dict(), spec, tmp_path)
    assert load_member("tiny", tmp_path, registry=registry).crop == spec.crop
    assert "crop" not in json.loads((tmp_path / "tiny" / MANIFEST_NAME).read_text())

    tight = CropPolicy("square", 0.05, -0.06)
    save_weights(spec.build().state_dict(), spec, tmp_path, crop=tight)
    data = json.loads((tmp_path / "tiny" / MANIFEST_NAME).read_text())
    assert data["crop"] == {"kind": "square", "margin": 0.05, "shift": -0.06}
    assert load_member("tiny", tmp_path, registry=registry).crop == tight


def test_manifest_with_a_malformed_crop_policy_is_refused(
    tmp_path: Path, registry: Registry
) -> None:
    spec = registry.get("tiny")
    save_weights(spec.build().state_dict(), spec, tmp_path, crop=CropPolicy("square", 0.1))
    path = tmp_path / "tiny" / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["crop"] = {"kind": "square", "margin": 5}
    path.write_text(json.dumps(data))
    with pytest.raises(IncompatibleCheckpointError, match="margin"):
        load_member("tiny", tmp_path, registry=registry)


def test_a_manifest_that_is_not_utf8_text_is_a_weights_error(
    tmp_path: Path, registry: Registry
) -> None:
    """Its UnicodeDecodeError escaped the manifest's checks: a worker reported
    an internal error instead of "models unavailable"."""
    spec = registry.get("tiny")
    save_weights(spec.build().state_dict(), spec, tmp_path)
    path = tmp_path / "tiny" / MANIFEST_NAME
    path.write_bytes(b"\xff\xfe" + path.read_bytes())  # saved as UTF-16 by an editor, say
    with pytest.raises(IncompatibleCheckpointError, match="not UTF-8 text"):
        load_member("tiny", tmp_path, registry=registry)


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("temperature", float("nan"), "temperature must be a positive number"),
        ("temperature", float("inf"), "temperature must be a positive number"),
        ("temperature", 0.0, "temperature must be a positive number"),
        ("temperature", -1.0, "temperature must be a positive number"),
        ("bias", float("nan"), "bias must be a finite number"),
        ("bias", float("-inf"), "bias must be a finite number"),
        ("threshold", float("nan"), "threshold must be in"),
        ("threshold", 1.0, "threshold must be in"),
    ],
)
def test_a_manifest_whose_calibration_is_not_a_usable_number_is_refused_at_load(
    tmp_path: Path, registry: Registry, field: str, value: float, said: str
) -> None:
    """A NaN temperature scored every face NaN ("uncertain"), an infinite one
    every face 0.5; the weights' hash does not cover the manifest."""
    spec = registry.get("tiny")
    save_weights(spec.build().state_dict(), spec, tmp_path, bias=0.1)
    path = tmp_path / "tiny" / MANIFEST_NAME
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))  # json writes NaN and Infinity, and reads them back
    with pytest.raises(IncompatibleCheckpointError, match=said):
        load_member("tiny", tmp_path, registry=registry)


@pytest.mark.parametrize("text", ["[]", "null", "3", '"manifest"'])
def test_a_manifest_that_is_not_a_json_object_is_refused(
    tmp_path: Path, registry: Registry, text: str
) -> None:
    """Its AttributeError escaped the manifest's checks: the models page and
    every upload answered 500."""
    spec = registry.get("tiny")
    save_weights(spec.build().state_dict(), spec, tmp_path)
    (tmp_path / "tiny" / MANIFEST_NAME).write_text(text)
    with pytest.raises(IncompatibleCheckpointError, match="not a valid weights manifest"):
        read_manifest(tmp_path, "tiny")


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("input_size", 0, "input_size must be a positive"),
        ("input_size", -5, "input_size must be a positive"),
        ("std", [0.2, 0.0, 0.2], "std must be three positive"),
        ("std", [0.2, float("nan"), 0.2], "std must be three positive"),
        ("mean", [0.4, float("inf"), 0.4], "mean must be three finite"),
    ],
)
def test_a_manifest_whose_preprocessing_cannot_work_is_refused_at_load(
    tmp_path: Path, registry: Registry, field: str, value: object, said: str
) -> None:
    """These failed later, in the crop's resize or as NaN scores."""
    spec = registry.get("tiny")
    save_weights(spec.build().state_dict(), spec, tmp_path)
    path = tmp_path / "tiny" / MANIFEST_NAME
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(IncompatibleCheckpointError, match=said):
        load_member("tiny", tmp_path, registry=registry)


def test_a_manifest_from_before_the_bias_reads_as_bias_0(
    tmp_path: Path, registry: Registry
) -> None:
    """Without a bias a manifest is written as before (version 1, no bias
    key), so older code still reads it; with one it says version 2, which
    older code refuses instead of scoring every face off by the bias."""
    spec = registry.get("tiny")
    save_weights(spec.build().state_dict(), spec, tmp_path, temperature=1.2)
    path = tmp_path / "tiny" / MANIFEST_NAME
    data = json.loads(path.read_text())
    assert data["version"] == 1 and "bias" not in data
    member = load_member("tiny", tmp_path, registry=registry)
    assert (member.temperature, member.bias) == (1.2, 0.0)
    save_weights(spec.build().state_dict(), spec, tmp_path, temperature=1.2, bias=0.4)
    data = json.loads(path.read_text())
    assert data["version"] == 2 and data["bias"] == 0.4
    assert load_member("tiny", tmp_path, registry=registry).bias == 0.4
    for version, bias, said in (
        (1, 0.4, "a version 1 manifest has no calibration bias"),
        (3, 0.4, "manifest version 3 is not one of 1, 2"),
    ):
        path.write_text(json.dumps({**data, "version": version, "bias": bias}))
        with pytest.raises(IncompatibleCheckpointError, match=said):
            load_member("tiny", tmp_path, registry=registry)


def test_recalibrating_a_member_keeps_its_weights_and_records_what_it_replaced(
    tmp_path: Path, registry: Registry
) -> None:
    spec = registry.get("tiny")
    before = save_weights(spec.build().state_dict(), spec, tmp_path, temperature=1.2)
    files = {f.path: (tmp_path / "tiny" / f.path).read_bytes() for f in before.files}
    after = recalibrate_manifest(
        tmp_path,
        "tiny",
        temperature=0.9,
        bias=-0.25,
        threshold=0.4,
        record={"scores": {"s.csv": "abc"}},
        metrics={"log_loss": 0.3},
    )
    assert read_manifest(tmp_path, "tiny") == after
    assert (after.temperature, after.bias, after.threshold) == (0.9, -0.25, 0.4)
    assert after.weights_sha256 == before.weights_sha256
    assert {p: (tmp_path / "tiny" / p).read_bytes() for p in files} == files
    assert after.provenance["calibrations"] == [
        {
            "scores": {"s.csv": "abc"},
            "replaced": {"temperature": 1.2, "bias": 0.0, "threshold": 0.5},
        }
    ]
    assert after.provenance["calibrated"] is True
    assert after.metrics["recalibrated"] == {"log_loss": 0.3}
    again = recalibrate_manifest(
        tmp_path, "tiny", temperature=1.0, bias=0.0, threshold=0.5, record={"n": 2}
    )
    assert [c.get("n") for c in again.provenance["calibrations"]] == [None, 2]
    for bad in ({"temperature": 0.0}, {"bias": float("nan")}, {"threshold": 1.0}):
        kw = {"temperature": 1.0, "bias": 0.0, "threshold": 0.5, **bad}
        with pytest.raises(ValueError, match="must be"):
            recalibrate_manifest(tmp_path, "tiny", record={}, **kw)  # type: ignore[arg-type]
    assert read_manifest(tmp_path, "tiny") == again


def test_installed_stamp_changes_with_what_is_installed_and_only_then(
    tmp_path: Path, registry: Registry
) -> None:
    """Workers compare it before each job to load the members again."""
    import os

    from ensemble.calibration import EnsembleCalibration, write_calibration

    spec = registry.get("tiny")
    assert installed_stamp(tmp_path, ["tiny"]) == (None, None)  # nothing installed
    torch.manual_seed(0)
    save_weights(spec.build().state_dict(), spec, tmp_path, dtype=torch.float32)
    installed = installed_stamp(tmp_path, ["tiny"])
    assert installed[0] is not None and installed[1] is None
    read_manifest(tmp_path, "tiny")  # reading changes nothing
    load_model(spec, tmp_path)
    assert installed_stamp(tmp_path, ["tiny"]) == installed
    # Other weights exported over the first.
    save_weights(spec.build().state_dict(), spec, tmp_path, dtype=torch.float32)
    exported = installed_stamp(tmp_path, ["tiny"])
    assert exported[0] != installed[0]
    recalibrate_manifest(
        tmp_path, "tiny", temperature=1.0, bias=0.5, threshold=0.5, record={"n": 1}
    )
    recalibrated = installed_stamp(tmp_path, ["tiny"])
    assert recalibrated[0] != exported[0]
    sha = read_manifest(tmp_path, "tiny").weights_sha256
    calibration = EnsembleCalibration(members={"tiny": sha}, slope=1.0, bias=0.0)
    write_calibration(tmp_path, calibration)
    with_ensemble = installed_stamp(tmp_path, ["tiny"])
    assert with_ensemble[0] == recalibrated[0] and with_ensemble[1] is not None
    # Copied in by hand with the old file times kept (tar x, cp -p) and
    # the same size: still seen.
    path = tmp_path / "ensemble.json"
    before = path.stat()
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace('"tiny"', '"tinY"', 1), encoding="utf-8")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    assert installed_stamp(tmp_path, ["tiny"])[1] != with_ensemble[1]


def test_a_save_that_fails_midway_leaves_the_installed_member_as_it_was(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export deleted the installed shards first and wrote the new ones in
    place: a full disk or a kill meanwhile left a member that loads nowhere."""
    import safetensors.torch

    spec = registry.get("tiny")
    torch.manual_seed(5)
    before = spec.build().state_dict()
    installed = save_weights(before, spec, tmp_path, quantization="fp32", max_shard_bytes=256)
    assert len(installed.files) > 2
    real = safetensors.torch.save_file
    calls = []

    def full_disk(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:
            real(tensors, filename, *args, **kwargs)
            raise OSError(28, "No space left on device")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    torch.manual_seed(6)
    with pytest.raises(OSError, match="No space left"):
        save_weights(
            spec.build().state_dict(), spec, tmp_path, quantization="fp32", max_shard_bytes=256
        )
    monkeypatch.undo()
    assert read_manifest(tmp_path, "tiny") == installed
    member = load_member("tiny", tmp_path, registry=registry)
    for key, value in member.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not list((tmp_path / "tiny").glob("*.part"))
    # A later save with fewer shards leaves only the ones its manifest lists.
    fewer = save_weights(before, spec, tmp_path, quantization="fp32")
    assert sorted(p.name for p in (tmp_path / "tiny").glob("*.safetensors")) == sorted(
        f.path for f in fewer.files
    )
    load_member("tiny", tmp_path, registry=registry)


def test_a_save_that_differs_from_the_checked_copy_installs_nothing(
    tmp_path: Path, registry: Registry
) -> None:
    """The export checks a staged copy, then writes the member in place; a
    difference used to be found after the installed member was replaced."""
    spec = registry.get("tiny")
    torch.manual_seed(7)
    before = spec.build().state_dict()
    installed = save_weights(before, spec, tmp_path / "w", quantization="fp32")
    checked = save_weights(before, spec, tmp_path / "staged", quantization="fp32")
    assert checked.weights_sha256 == installed.weights_sha256  # deterministic
    torch.manual_seed(8)
    other = spec.build().state_dict()
    with pytest.raises(WeightsIntegrityError, match="nothing was installed"):
        save_weights(
            other, spec, tmp_path / "w", quantization="fp32", expect_sha256=checked.weights_sha256
        )
    assert read_manifest(tmp_path / "w", "tiny") == installed
    assert not list((tmp_path / "w" / "tiny").glob("*.part"))
    member = load_member("tiny", tmp_path / "w", registry=registry)
    for key, value in member.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    same = save_weights(
        before, spec, tmp_path / "w", quantization="fp32", expect_sha256=checked.weights_sha256
    )
    assert same.weights_sha256 == checked.weights_sha256
