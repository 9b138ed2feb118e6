"""Weights on disk: manifests, integrity checks, strict loading, imports.

Layout: ``<weights_dir>/<member>/manifest.json`` beside the weight files it
lists. The project ships safetensors shards (no pickle); published ``.pth``
checkpoints a user imports are read with ``torch.load(weights_only=True)``.
Every file's sha256 is checked before it is read, and every state_dict is
loaded with ``strict=True``: a member never runs on weights that do not fit it,
and never on random weights outside tests.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import math
import pickle
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from ensemble.calibration import calibration_path, input_record
from ensemble.crops import CropPolicy
from ensemble.errors import (
    IncompatibleCheckpointError,
    MissingWeightsError,
    WeightsError,
    WeightsIntegrityError,
)
from ensemble.media import file_sha256
from ensemble.registry import MemberSpec

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
# A manifest whose member has a calibration bias: code from before the bias
# would ignore it and score every face off by it, so such a manifest says a
# version that code refuses. Without a bias a manifest stays version 1.
BIAS_MANIFEST_VERSION = 2
READABLE_MANIFEST_VERSIONS = (MANIFEST_VERSION, BIAS_MANIFEST_VERSION)
# Shards stay below the size a single file may have in transfers and reviews.
MAX_SHARD_BYTES = 15 * 1024 * 1024
# A safetensors file is an 8-byte length, a JSON header (padded to 8 bytes)
# and the tensor data; the shard limit counts the header too.
SHARD_HEADER_BYTES = 16
SAFETENSORS_ENTRY_BYTES = 64
MAX_DIGITS = 21  # an int64 written in decimal, with its separator
_DATAPARALLEL_PREFIX = "module."
# A weights file being written, before it takes its name.
PART_SUFFIX = ".part"
# int8 shards store each quantised tensor's per-output-channel scales beside it
# under this suffix (":" never occurs in a PyTorch state_dict key).
INT8_SCALE_SUFFIX = ":int8_scale"
INT8_MAX = 127
# "none": tensors kept as the source checkpoint stored them (imports).
Quantization = Literal["fp16", "fp32", "int8", "none"]
QUANTIZATIONS: tuple[Quantization, ...] = get_args(Quantization)


def files_digest(files: Sequence[WeightFile]) -> str:
    """One hash naming this exact set of weight files (a manifest's
    ``weights_sha256``)."""
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        digest.update(f"{f.path}:{f.sha256}\n".encode())
    return digest.hexdigest()


def parse_quantization(value: str) -> Quantization:
    """``value`` as a :data:`Quantization`, or ``ValueError`` naming the known ones."""
    for known in QUANTIZATIONS:
        if value == known:
            return known
    raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {value!r}")


@dataclass(frozen=True)
class WeightFile:
    path: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """Everything needed to run a member and to say where its weights came from."""

    member: str
    architecture: str
    format: str  # "safetensors" or "pytorch"
    files: tuple[WeightFile, ...]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    temperature: float = 1.0
    threshold: float = 0.5
    provenance: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    # How floating-point tensors are stored: "fp16", "fp32", or "int8"
    # (per-output-channel symmetric int8 with fp32 scales, dequantised at load).
    quantization: Quantization = "fp16"
    version: int = MANIFEST_VERSION
    # The face crop the weights were trained for (``CropPolicy.to_dict``);
    # None: the registry's policy for the member.
    crop: Mapping[str, Any] | None = None
    # Added to the temperature-scaled logit: ``sigmoid(logit / T + bias)``
    # (:func:`ensemble.scoring.calibrate`). 0 in manifests written before it.
    bias: float = 0.0

    def crop_policy(self, default: CropPolicy) -> CropPolicy:
        """The manifest's crop policy, or ``default`` when it names none."""
        return default if self.crop is None else CropPolicy.from_dict(self.crop)

    @property
    def inputs(self) -> dict[str, Any]:
        """How this member prepares faces (:func:`ensemble.calibration.input_record`)."""
        crop = None if self.crop is None else CropPolicy.from_dict(self.crop).to_dict()
        return input_record(self.input_size, crop, self.mean, self.std)

    @property
    def weights_sha256(self) -> str:
        """One hash naming this exact set of weight files."""
        return files_digest(self.files)

    def to_json(self) -> str:
        data = asdict(self)
        data["provenance"] = dict(self.provenance)
        data["metrics"] = dict(self.metrics)
        if self.crop is None:
            del data["crop"]
        else:
            data["crop"] = dict(self.crop)
        if self.bias == 0:
            del data["bias"]
        else:
            data["version"] = BIAS_MANIFEST_VERSION
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: Path) -> Manifest:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
            if data.get("version") not in READABLE_MANIFEST_VERSIONS:
                raise ValueError(
                    f"manifest version {data.get('version')} is not one of "
                    f"{', '.join(map(str, READABLE_MANIFEST_VERSIONS))}"
                )
            if data.get("version") == MANIFEST_VERSION and data.get("bias", 0) != 0:
                raise ValueError(
                    f"a version {MANIFEST_VERSION} manifest has no calibration bias "
                    f"(got {data['bias']}; a bias needs version {BIAS_MANIFEST_VERSION})"
                )
            manifest = cls(
                member=str(data["member"]),
                architecture=str(data["architecture"]),
                format=str(data["format"]),
                files=tuple(
                    WeightFile(str(f["path"]), str(f["sha256"]), int(f["bytes"]))
                    for f in data["files"]
                ),
                input_size=int(data["input_size"]),
                mean=_triple(data["mean"]),
                std=_triple(data["std"]),
                temperature=float(data.get("temperature", 1.0)),
                threshold=float(data.get("threshold", 0.5)),
                provenance=dict(data.get("provenance", {})),
                metrics=dict(data.get("metrics", {})),
                quantization=parse_quantization(str(data.get("quantization", "fp16"))),
                crop=None if data.get("crop") is None else dict(data["crop"]),
                bias=float(data.get("bias", 0.0)),
            )
            manifest.crop_policy(CropPolicy("square", 0.0))  # refuse a malformed policy
            # A NaN or infinite temperature would score every face NaN or 0.5.
            if not (math.isfinite(manifest.temperature) and manifest.temperature > 0):
                raise ValueError(
                    f"temperature must be a positive number, got {data['temperature']}"
                )
            if manifest.input_size <= 0:
                raise ValueError(
                    f"input_size must be a positive number of pixels, got {data['input_size']}"
                )
            if not all(math.isfinite(v) and v > 0 for v in manifest.std):
                raise ValueError(f"std must be three positive numbers, got {data['std']}")
            if not all(math.isfinite(v) for v in manifest.mean):
                raise ValueError(f"mean must be three finite numbers, got {data['mean']}")
            if not math.isfinite(manifest.bias):
                raise ValueError(f"bias must be a finite number, got {data['bias']}")
            if not (math.isfinite(manifest.threshold) and 0 < manifest.threshold < 1):
                raise ValueError(f"threshold must be in (0, 1), got {data['threshold']}")
            return manifest
        except (KeyError, TypeError, ValueError) as e:
            raise IncompatibleCheckpointError(
                f"{source} is not a valid weights manifest: {e}"
            ) from e


def _triple(values: Any) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return (a, b, c)


def _unreadable(path: Path, error: OSError) -> WeightsError:
    """A weights file or manifest the worker may not read (permissions, a
    disk error): the models are unavailable, not an internal error."""
    return WeightsError(f"{path} cannot be read: {error.strerror or type(error).__name__}")


def member_dir(weights_dir: Path, member: str) -> Path:
    return weights_dir / member


def install_hint(member: str, weights_dir: Path) -> str:
    return (
        f"No weights are installed for detector '{member}' (expected "
        f"{member_dir(weights_dir, member) / MANIFEST_NAME}). Train them with "
        f"'python manage.py train_detector --member {member} ...' and export them there, "
        f"or import a published checkpoint with "
        f"'python manage.py import_weights --member {member} FILE'."
    )


def read_manifest(weights_dir: Path, member: str) -> Manifest:
    path = member_dir(weights_dir, member) / MANIFEST_NAME
    if not path.is_file():
        raise MissingWeightsError(install_hint(member, weights_dir))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise IncompatibleCheckpointError(
            f"{path} is not a valid weights manifest: it is not UTF-8 text"
        ) from e
    except OSError as e:  # unreadable (permissions, a disk error)
        raise _unreadable(path, e) from e
    manifest = Manifest.from_json(text, path)
    if manifest.member != member:
        raise IncompatibleCheckpointError(f"{path} describes '{manifest.member}', not '{member}'")
    return manifest


def installed_stamp(weights_dir: Path, members: Sequence[str]) -> tuple[str | None, ...]:
    """What changes when members' weights or calibration are installed anew:
    the sha256 of each member's manifest and of ``ensemble.json`` (``None``
    where absent). Cheap (a few small files), for a worker to see that what
    it loaded is no longer what is installed, however the files got there
    (an export, ``calibrate_member``, ``tar x`` or ``cp -p`` keeping old
    times). An error other than a missing file is raised, not taken for a
    change.

    The manifest is the right file to watch: an export writes it last and
    atomically (after the weight files), ``calibrate_member`` rewrites only
    it, and it holds the hash of every weight file."""
    paths = [member_dir(weights_dir, m) / MANIFEST_NAME for m in members]
    paths.append(calibration_path(weights_dir))
    stamp: list[str | None] = []
    for path in paths:
        try:
            stamp.append(hashlib.sha256(path.read_bytes()).hexdigest())
        except (FileNotFoundError, NotADirectoryError):
            stamp.append(None)
        except OSError as e:  # unreadable: the worker cannot load what is installed
            raise _unreadable(path, e) from e
    return tuple(stamp)


def _numpy_scalar_globals() -> list[Any]:
    """What a pickled numpy scalar refers to, allowed beside tensors when a
    checkpoint is read with ``weights_only=True``.

    Published training scripts save numbers beside the weights, often numpy
    scalars (selimsef's ``bce_best`` is a ``numpy.float64`` from scikit-learn's
    log loss); torch's safe unpickler refuses those unless allowed. The scalar
    constructor only builds a number from a dtype and its bytes. numpy 1.x
    pickled it as ``numpy.core.multiarray.scalar``, numpy 2 as
    ``numpy._core.multiarray.scalar``: both names are allowed."""
    import numpy as np

    scalar = np._core.multiarray.scalar  # type: ignore[attr-defined]
    dtypes = [
        type(np.dtype(code)) for code in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "?")
    ]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes]


def read_checkpoint(source: Path | bytes) -> Any:
    """``torch.load(weights_only=True)`` of a ``.pth`` file (or its bytes):
    tensors, containers, plain numbers and numpy scalars, never arbitrary
    objects. Raise :class:`IncompatibleCheckpointError` when it is refused or
    not a checkpoint."""
    name = source.name if isinstance(source, Path) else "the checkpoint"
    stream: Any = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(stream, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise IncompatibleCheckpointError(
            f"{name} could not be read as a PyTorch checkpoint with weights_only=True: {e}"
        ) from e


def normalize_checkpoint(obj: Any) -> dict[str, Tensor]:
    """A state_dict from what published training scripts save: a bare
    state_dict, or one under 'state_dict' (selimsef), 'net' (polimi's
    ``bestval.pth``), 'model' or 'model_state_dict'; DataParallel's 'module.'
    prefix removed."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "net", "model", "model_state_dict"):
            inner = obj.get(key)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, Tensor) for v in inner.values())
            ):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise IncompatibleCheckpointError("the checkpoint does not contain a state_dict of tensors")
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        name = str(key)
        state[name.removeprefix(_DATAPARALLEL_PREFIX)] = value
    return state


def check_fits(model: nn.Module, state: Mapping[str, Tensor], label: str) -> None:
    """Raise :class:`IncompatibleCheckpointError` naming what does not fit."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        parts = []
        for title, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        ):
            if keys:
                shown = ", ".join(keys[:5]) + (
                    f" and {len(keys) - 5} more" if len(keys) > 5 else ""
                )
                parts.append(f"{len(keys)} {title} ({shown})")
        raise IncompatibleCheckpointError(
            f"{label} does not fit the architecture: " + "; ".join(parts)
        )


def _read_verified(path: Path, expected: WeightFile) -> bytes:
    """The file's bytes, checked against the manifest's sha256: read once, so
    what is loaded is what was checked even if the file is replaced meanwhile."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        raise MissingWeightsError(f"weights file {path} listed in the manifest is missing") from e
    except OSError as e:  # unreadable: permissions (safetensors writes 0600), a disk error
        raise _unreadable(path, e) from e
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.sha256:
        raise WeightsIntegrityError(
            f"{path} is damaged or was replaced: sha256 {actual[:12]}..., "
            f"the manifest says {expected.sha256[:12]}..."
        )
    return data


def load_state(weights_dir: Path, manifest: Manifest) -> dict[str, Tensor]:
    """Read and hash-check every file of a manifest; tensors as float32."""
    folder = member_dir(weights_dir, manifest.member)
    if manifest.quantization not in QUANTIZATIONS:
        raise IncompatibleCheckpointError(
            f"unknown weights quantization {manifest.quantization!r} "
            f"(known: {', '.join(QUANTIZATIONS)})"
        )
    state: dict[str, Tensor] = {}
    for wf in manifest.files:
        path = folder / wf.path
        data = _read_verified(path, wf)
        if manifest.format == "safetensors":
            from safetensors.torch import load

            # From bytes, not load_file: its tensors keep the file mapped,
            # and every page of it resident, for as long as any one of them
            # lives (a member keeps only some, ``ensemble.members``).
            part: dict[str, Tensor] = load(data)
        elif manifest.format == "pytorch":
            try:
                part = normalize_checkpoint(read_checkpoint(data))
            except IncompatibleCheckpointError as e:  # refused or bad file
                raise IncompatibleCheckpointError(f"{path} could not be read safely: {e}") from e
        else:
            raise IncompatibleCheckpointError(f"unknown weights format {manifest.format!r}")
        overlap = set(part) & set(state)
        if overlap:
            raise IncompatibleCheckpointError(f"{path} repeats tensors: {sorted(overlap)[:3]}")
        state.update(part)
    if manifest.quantization == "int8":
        state = dequantize_int8(state)
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def quantize_int8(tensor: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel int8: ``(q, scale)`` with
    ``tensor ~= q * scale`` broadcast over dimension 0. ``scale`` is float32."""
    t = tensor.detach().float()
    flat = t.reshape(t.shape[0], -1)
    scale = flat.abs().amax(dim=1) / INT8_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(flat / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q.reshape(t.shape), scale


def dequantize_int8(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Undo :func:`quantize_int8` for every tensor stored with scales."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith(INT8_SCALE_SUFFIX):
            continue
        scale = state.get(key + INT8_SCALE_SUFFIX)
        if scale is None:
            out[key] = value
            continue
        if value.dtype != torch.int8 or scale.shape != (value.shape[0],):
            raise IncompatibleCheckpointError(
                f"int8 tensor {key!r} and its scales do not match ({value.dtype}, "
                f"{tuple(value.shape)} vs scales {tuple(scale.shape)})"
            )
        shape = (-1,) + (1,) * (value.dim() - 1)
        out[key] = value.float() * scale.float().reshape(shape)
    return out


def stored_tensors(key: str, value: Tensor, quantization: str) -> dict[str, Tensor]:
    """The tensors one state_dict entry becomes on disk."""
    t = value.detach().cpu()
    if not t.is_floating_point():
        return {key: t.contiguous()}
    if quantization == "int8" and t.dim() >= 2:
        # Weights of convolutions and linear layers: int8 per output channel.
        # Biases and normalisation parameters stay fp16: they are small and
        # sensitive.
        q, scale = quantize_int8(t)
        return {key: q.contiguous(), key + INT8_SCALE_SUFFIX: scale.contiguous()}
    dtype = torch.float32 if quantization == "fp32" else torch.float16
    return {key: t.to(dtype).contiguous()}


def _header_entry_bytes(key: str, tensor: Tensor) -> int:
    """An upper bound of the bytes ``key``'s entry takes in a safetensors
    JSON header: ``"key":{"dtype":"F16","shape":[...],"data_offsets":[a,b]},``."""
    return len(json.dumps(key)) + SAFETENSORS_ENTRY_BYTES + MAX_DIGITS * (tensor.dim() + 2)


def load_model(spec: MemberSpec, weights_dir: Path) -> tuple[nn.Module, Manifest]:
    """Build the member's architecture and load its installed weights strictly."""
    manifest = read_manifest(weights_dir, spec.name)
    state = load_state(weights_dir, manifest)
    # Built on the meta device (shapes, no memory), the loaded tensors then
    # become its parameters: one copy of the weights in memory, not two.
    with torch.device("meta"):
        model = spec.build()
    check_fits(model, state, f"the weights of '{spec.name}'")
    model.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        # Tensors a state_dict does not hold (non-persistent buffers) need
        # the real constructor.
        model = spec.build()
        model.load_state_dict(state, strict=True)
    return model.eval(), manifest


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process umask
    (read from /proc, since setting the umask to read it is not thread-safe;
    0o644 where /proc does not say)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644


def _write_manifest(folder: Path, manifest: Manifest) -> None:
    tmp = folder / (MANIFEST_NAME + ".tmp")
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    tmp.replace(folder / MANIFEST_NAME)


def recalibrate_manifest(
    weights_dir: Path,
    member: str,
    *,
    temperature: float,
    bias: float,
    threshold: float,
    record: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
) -> Manifest:
    """Give an installed member a new calibration (temperature, bias, member
    threshold), leaving its weight files and their hash as they are.

    The manifest's ``provenance.calibrations`` keeps every calibration it
    had, each with ``record`` (what it was fitted on) and the values it
    replaced; ``metrics`` (if given) goes under ``metrics.recalibrated``, next
    to the figures measured at export (the latest calibration's; ``record``
    may keep each one's)."""
    manifest = read_manifest(weights_dir, member)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    if not math.isfinite(bias):
        raise ValueError(f"bias must be a finite number, got {bias}")
    if not (math.isfinite(threshold) and 0 < threshold < 1):
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    previous = {
        "temperature": manifest.temperature,
        "bias": manifest.bias,
        "threshold": manifest.threshold,
    }
    provenance = {**manifest.provenance, "calibrated": True}
    provenance["calibrations"] = [
        *provenance.get("calibrations", []),
        {**record, "replaced": previous},
    ]
    new_metrics = dict(manifest.metrics)
    if metrics is not None:
        new_metrics["recalibrated"] = dict(metrics)
    updated = replace(
        manifest,
        temperature=temperature,
        bias=bias,
        threshold=threshold,
        provenance=provenance,
        metrics=new_metrics,
    )
    _write_manifest(member_dir(weights_dir, member), updated)
    return updated


def save_weights(
    state: Mapping[str, Tensor],
    spec: MemberSpec,
    weights_dir: Path,
    *,
    input_size: int | None = None,
    dtype: torch.dtype = torch.float16,
    quantization: str | None = None,
    temperature: float = 1.0,
    bias: float = 0.0,
    threshold: float = 0.5,
    provenance: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    crop: CropPolicy | None = None,
    expect_sha256: str | None = None,
) -> Manifest:
    """Write a state_dict as safetensors shards plus a manifest.

    ``quantization`` ("fp16", "fp32" or "int8") wins over ``dtype``; without
    it ``dtype`` float16/float32 selects fp16/fp32. With ``expect_sha256``
    (the weights of a copy written and checked elsewhere), shards that hash
    otherwise are removed before anything is installed
    (:class:`WeightsIntegrityError`).
    """
    from safetensors.torch import save_file

    quant = parse_quantization(quantization or ("fp32" if dtype == torch.float32 else "fp16"))
    if quant == "none":
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quant!r}")
    folder = member_dir(weights_dir, spec.name)
    folder.mkdir(parents=True, exist_ok=True)
    # What an interrupted save left behind.
    for stale in folder.glob(f"{spec.name}-*.safetensors{PART_SUFFIX}"):
        stale.unlink()
    shards: list[dict[str, Tensor]] = [{}]
    size = SHARD_HEADER_BYTES
    for key, value in state.items():
        stored = stored_tensors(key, value, quant)
        nbytes = sum(
            t.numel() * t.element_size() + _header_entry_bytes(k, t) for k, t in stored.items()
        )
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = SHARD_HEADER_BYTES
        shards[-1].update(stored)
        size += nbytes
    # Every shard is written beside the installed ones first: a full disk or
    # a kill while writing leaves the installed member as it was. Then the
    # shards take their names, the manifest is replaced (atomically), and
    # shards it no longer lists go. A worker that loads in the moment between
    # the renames and the manifest finds a hash mismatch and reports the
    # models unavailable for that job; the next loads the new weights.
    files = []
    written: list[Path] = []
    try:
        for i, shard in enumerate(shards):
            name = f"{spec.name}-{i + 1:02d}-of-{len(shards):02d}.safetensors"
            part = folder / (name + PART_SUFFIX)
            written.append(part)
            save_file(shard, str(part))
            # safetensors (0.8) creates its files readable by their owner
            # only: a worker running as another user could not load what an
            # export installed. Give them the mode any new file gets (the umask's).
            part.chmod(new_file_mode())
            nbytes = part.stat().st_size
            if nbytes > max_shard_bytes:
                # Only a single state_dict entry larger than the limit gets here.
                logger.warning(
                    "%s is %d bytes, over the %d-byte shard limit: tensor %s alone is that large",
                    name,
                    nbytes,
                    max_shard_bytes,
                    sorted(shard)[0],
                )
            files.append(WeightFile(name, file_sha256(part), nbytes))
        if expect_sha256 is not None and files_digest(files) != expect_sha256:
            raise WeightsIntegrityError(
                f"the {spec.name} weights written to {folder} differ from the copy that "
                "was checked; nothing was installed"
            )
    except BaseException:
        for part in written:
            part.unlink(missing_ok=True)
        raise
    for part in written:
        part.replace(folder / part.name.removesuffix(PART_SUFFIX))
    manifest = Manifest(
        member=spec.name,
        architecture=spec.build.__name__,
        format="safetensors",
        files=tuple(files),
        input_size=input_size or spec.input_size,
        mean=spec.mean,
        std=spec.std,
        temperature=temperature,
        threshold=threshold,
        provenance=dict(provenance or {}),
        metrics=dict(metrics or {}),
        quantization=quant,
        crop=None if crop is None else crop.to_dict(),
        bias=bias,
    )
    _write_manifest(folder, manifest)
    listed = {f.path for f in files}
    for old in folder.glob(f"{spec.name}-*.safetensors"):
        if old.name not in listed:
            old.unlink()
    return manifest


def import_checkpoint(
    spec: MemberSpec,
    source: Path,
    weights_dir: Path,
    *,
    input_size: int | None = None,
    note: str = "",
) -> Manifest:
    """Validate a published ``.pth`` checkpoint against the member's
    architecture and install it with a manifest. Nothing is written unless the
    checkpoint loads strictly."""
    if not source.is_file():
        raise MissingWeightsError(f"{source} does not exist")
    if input_size is not None and input_size <= 0:
        raise IncompatibleCheckpointError(
            f"the input size must be a positive number of pixels, got {input_size}"
        )
    state = normalize_checkpoint(read_checkpoint(source))
    model = spec.build()
    check_fits(model, state, source.name)
    model.load_state_dict(state, strict=True)

    folder = member_dir(weights_dir, spec.name)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"imported-{source.name}"
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    wf = WeightFile(target.name, file_sha256(target), target.stat().st_size)
    manifest = Manifest(
        member=spec.name,
        architecture=spec.build.__name__,
        format="pytorch",
        files=(wf,),
        input_size=input_size or spec.checkpoint_input_size or spec.input_size,
        mean=spec.mean,
        std=spec.std,
        temperature=1.0,
        threshold=0.5,
        provenance={
            "source": "imported",
            "original_file": source.name,
            "checkpoint_format": spec.checkpoint_format,
            "calibrated": False,
            "note": note,
        },
        quantization="none",
    )
    _write_manifest(folder, manifest)
    logger.info("imported %s for %s (sha256 %s)", source.name, spec.name, wf.sha256)
    return manifest
