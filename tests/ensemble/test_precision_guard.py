"""bf16 against fp32 on the shipped weights (issue 15's accuracy guard).

OpenVINO's bf16 keeps 8 bits of mantissa, so every score moves a little. On
a fixed set of validation crops (the first 48 real and 48 fake of
dfdc_faces' val split, by file name) each shipped member's AUC in bf16 must
stay within 0.005 of fp32, and no probability may move by more than
``MAX_PROB_CHANGE``. The full-split figures come from ``evaluate --precision
fp32`` and ``--precision bf16`` (README, "Speed").
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from ensemble.evaluation import roc_auc
from ensemble.members import load_member
from ensemble.runtime import cpu_has_bf16, openvino_available
from ensemble.scoring import calibrate
from ensemble.training.data import labels_array, load_samples, read_rgb, resize_to, select
from ensemble.weights import read_manifest

ROOT = Path(__file__).resolve().parents[2]
PER_CLASS = 48
MAX_AUC_CHANGE = 0.005
MAX_PROB_CHANGE = 0.05
MEMBERS = ("resnet50", "effnet_autoatt_b4", "effnet_b7")


@pytest.fixture(scope="module")
def crops_and_labels(shared: Path) -> tuple[list[Path], np.ndarray]:
    samples = sorted(
        select(load_samples(shared / "datasets" / "dfdc_faces"), "val"), key=lambda s: str(s.path)
    )
    chosen = [s for s in samples if s.label == 0][:PER_CLASS]
    chosen += [s for s in samples if s.label == 1][:PER_CLASS]
    return [s.path for s in chosen], labels_array(chosen)


@pytest.mark.slow
@pytest.mark.openvino
@pytest.mark.parametrize("name", MEMBERS)
def test_bf16_scores_stay_with_fp32_on_the_shipped_weights(
    name: str, crops_and_labels: tuple[list[Path], np.ndarray], tmp_path: Path
) -> None:
    if not (openvino_available() and cpu_has_bf16()):
        pytest.skip("this CPU has no bf16 kernels for OpenVINO")
    weights = ROOT / "weights"
    read_manifest(weights, name)  # the shipped weights are in the repository
    paths, labels = crops_and_labels
    probs = {}
    for precision in ("fp32", "bf16"):
        member = load_member(
            name, weights, backend="openvino", precision=precision, cache_dir=tmp_path
        )
        assert member.compute_precision == precision
        crops = [resize_to(read_rgb(p), None, member.input_size)[0] for p in paths]
        probs[precision] = calibrate(member.logits(crops, 16), member.temperature, member.bias)
    change = np.abs(probs["bf16"] - probs["fp32"])
    auc32, auc16 = roc_auc(probs["fp32"], labels), roc_auc(probs["bf16"], labels)
    assert auc32 is not None and auc16 is not None
    logging.getLogger(__name__).info(
        "%s: AUC fp32 %.4f bf16 %.4f, max |dp| %.4f", name, auc32, auc16, change.max()
    )
    assert abs(auc16 - auc32) <= MAX_AUC_CHANGE
    assert change.max() <= MAX_PROB_CHANGE
    assert change.max() > 0  # really two precisions, not the same graph twice
