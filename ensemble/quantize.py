"""int8 members on CPU: static quantization of the exported graphs.

On a CPU with AVX-512 VNNI, ONNX Runtime runs an int8 member two to four
times faster than fp32 (``bench/speed.py --int8`` measures it). Static
quantization needs representative inputs to fix each activation's range, so
an int8 graph is made from face crops the user supplies
(``python manage.py calibrate_int8 MEDIA ...``), not at load time: weights
are per-channel int8, activations uint8, in QDQ form, and everything a
member returns (logit and taps) stays float.

int8 is never the default. It changes every score a little, and whether it
keeps a member's accuracy can only be judged on trained weights and labelled
media: ``calibrate_int8`` reports how far the probabilities moved on the
calibration crops, and ``evaluate --precision int8`` measures AUC on
labelled data. A member asked to run in int8 without a calibrated graph for
its exact weights refuses with :class:`Int8NotCalibratedError`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch

from ensemble.errors import WeightsError
from ensemble.runtime import onnx_cache_name

if TYPE_CHECKING:
    from ensemble.media import RGBImage
    from ensemble.members import LoadedMember

logger = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("fp32", "int8")
# Crops fed to the calibrator per call.
CALIBRATION_BATCH = 4


class Int8NotCalibratedError(WeightsError):
    """int8 was asked for but no calibrated graph exists for these weights."""


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def int8_graph_path(cache_dir: Path, member: str, input_size: int, weights_sha256: str) -> Path:
    """Where the int8 graph of one member's weights version is kept (the
    name also holds the torch version that exported it)."""
    shape = (3, input_size, input_size)
    name = onnx_cache_name(f"{member}_{input_size}_int8", weights_sha256, shape)
    return Path(cache_dir) / "onnx" / name


def not_calibrated(member: str, weights_sha256: str | None) -> Int8NotCalibratedError:
    which = f"weights {weights_sha256[:12]}" if weights_sha256 else "weights without a hash"
    return Int8NotCalibratedError(
        f"{member} was asked to run in int8 but has no int8 graph for its {which}; run "
        "`python manage.py calibrate_int8 MEDIA...` on a few videos with faces first, "
        "or set the precision to fp32"
    )


def quantize_graph(fp32_path: Path, out_path: Path, calibration: npt.NDArray[np.float32]) -> None:
    """Write the static int8 version of ``fp32_path`` to ``out_path``
    (atomically), calibrated on ``calibration`` (normalised ``[N, 3, H, W]``)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    if len(calibration) == 0:
        raise ValueError("int8 calibration needs at least one face crop")

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches = iter(
                {"x": np.ascontiguousarray(calibration[i : i + CALIBRATION_BATCH])}
                for i in range(0, len(calibration), CALIBRATION_BATCH)
            )

        def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
            return next(self._batches, None)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantized = Path(tmp) / "int8.onnx"
        # Shape inference and graph clean-up first, as ONNX Runtime advises.
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(
            str(prepared),
            str(quantized),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        quantized.replace(out_path)
    logger.info("wrote int8 graph %s (%d calibration crops)", out_path, len(calibration))


@dataclass(frozen=True)
class CalibrationReport:
    """What ``calibrate_int8`` made, and how far int8 moved the member's
    calibrated probabilities on the calibration crops themselves."""

    member: str
    path: Path
    crops: int
    seconds: float
    mean_abs_change: float
    max_abs_change: float


def calibrate_int8(
    member: LoadedMember, crops: Sequence[RGBImage], batch_size: int = 8
) -> CalibrationReport:
    """Quantize ``member`` (fp32, ONNX Runtime, installed weights) on face
    ``crops`` cut for it, and store the int8 graph where a member loaded with
    ``precision="int8"`` looks for it."""
    from ensemble.runtime import OnnxRunner
    from ensemble.scoring import calibrate

    source = member.graph_path
    if member.precision != "fp32" or source is None or not source.exists():
        raise ValueError(
            f"{member.name}: calibrate an fp32 member on the onnxruntime backend "
            "with installed weights and a cache folder"
        )
    if member.weights_sha256 is None or member.cache_dir is None:
        raise ValueError(f"{member.name}: int8 graphs are kept per weights version and cache")
    if not crops:
        raise ValueError(f"{member.name}: no face crops to calibrate on")
    started = time.perf_counter()
    with torch.inference_mode():
        x = member.to_tensor(crops).contiguous().numpy()
    out = int8_graph_path(member.cache_dir, member.name, member.input_size, member.weights_sha256)
    quantize_graph(source, out, x)
    seconds = time.perf_counter() - started
    int8 = OnnxRunner(out, member.threads)
    int8_logits = np.concatenate(
        [
            np.asarray(int8(x[i : i + batch_size], ["y"])[0], np.float64).reshape(-1)
            for i in range(0, len(x), batch_size)
        ]
    )
    before = calibrate(member.logits(crops, batch_size), member.temperature)
    after = calibrate(int8_logits, member.temperature)
    change = np.abs(after - before)
    return CalibrationReport(
        member.name, out, len(crops), seconds, float(change.mean()), float(change.max())
    )
