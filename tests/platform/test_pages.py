"""What the pages say: models and versions, progress, rejected vs failed, results."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.urls import reverse

from analyses.models import Submission
from analyses.services import models_status

pytestmark = pytest.mark.django_db


def test_models_page_names_members_and_weight_hashes(site: Path, clients) -> None:
    page = clients["anonymous"].get(reverse("analyses:models")).content.decode()
    for member in models_status():
        assert member.name in page and member.weights_sha256 in page
    assert "All configured members have weights installed" in page


def test_models_page_says_how_the_members_run_and_are_combined(
    site: Path, clients, tmp_path: Path
) -> None:
    import shutil

    from django.conf import settings
    from django.test import override_settings

    # A copy of the session's tiny weights: the calibration file stays in this test.
    weights = shutil.copytree(settings.TRUSTTRACE["WEIGHTS_DIR"], tmp_path / "weights")
    with override_settings(TRUSTTRACE={**settings.TRUSTTRACE, "WEIGHTS_DIR": weights}):
        _check_models_page_runtime(weights, clients)


def _check_models_page_runtime(weights: Path, clients) -> None:
    from ensemble.calibration import EnsembleCalibration, write_calibration

    page = clients["anonymous"].get(reverse("analyses:models")).content.decode()
    # The tests' settings leave backend and precision on "auto": ONNX Runtime, fp32.
    assert '<dd id="models-backend">onnxruntime</dd>' in page
    assert '<dd id="models-precision">fp32</dd>' in page
    assert "no ensemble calibration installed" in page
    shas = {m.name: m.weights_sha256 for m in models_status()}
    cv = {"log_loss": 0.48, "ece": 0.027}
    write_calibration(weights, EnsembleCalibration(shas, 1.87, 0.47, {"cross_validated": cv}))
    page = clients["anonymous"].get(reverse("analyses:models")).content.decode()
    assert "sigmoid(1.870 * logit(mean) + 0.470)" in page and "ECE 0.027" in page
    share = 1 / len(shas)
    weighted = EnsembleCalibration(shas, 1.5, -0.2, member_weights=dict.fromkeys(shas, share))
    write_calibration(weights, weighted)
    page = clients["anonymous"].get(reverse("analyses:models")).content.decode()
    terms = " + ".join(f"{share:.2f} * logit({m})" for m in sorted(shas))
    expected = f"logits, recalibrated: sigmoid(1.500 * ({terms}) - 0.200)"
    assert "weighted mean of the members&#x27; " + expected in page
    first = next(iter(shas))
    write_calibration(weights, EnsembleCalibration({**shas, first: "0" * 64}, 1.87, 0.47))
    page = clients["anonymous"].get(reverse("analyses:models")).content.decode()
    assert f"not applied: fitted for other weights of {first}" in page


def test_models_page_says_plainly_when_weights_are_missing(no_weights_site: Path, clients) -> None:
    page = clients["anonymous"].get(reverse("analyses:models")).content.decode()
    assert "cannot analyse media yet" in page and "No weights are installed for detector" in page


def test_progress_json_and_bar_while_running(clients, users, finished) -> None:
    sub = finished(users["submitter"])
    Submission.objects.filter(pk=sub.pk).update(status="running", stage="tiny_a", percent=42)
    data = clients["submitter"].get(reverse("analyses:progress", args=[sub.pk])).json()
    assert data == {
        "id": str(sub.pk), "status": "running", "stage": "tiny_a", "percent": 42,
        "finished": False, "verdict": "fake", "score": 0.8, "reason": None,
    }  # fmt: skip
    page = clients["submitter"].get(reverse("analyses:detail", args=[sub.pk])).content.decode()
    assert '<progress id="progress" max="100" value="42">' in page
    assert 'id="verdict"' not in page  # no result shown before it is done


@pytest.mark.parametrize(
    ("status", "reason", "shown"),
    [
        ("rejected", "The file is empty.", "Rejected: The file is empty."),
        ("failed", "The analysis stopped because of an internal error (OSError).",
         "internal error (OSError)"),
    ],
)  # fmt: skip
def test_rejected_and_failed_show_their_reason_and_no_score(
    clients, users, finished, status: str, reason: str, shown: str
) -> None:
    sub = finished(users["submitter"])
    Submission.objects.filter(pk=sub.pk).update(
        status=status, reason=reason, verdict="", score=None
    )
    page = clients["submitter"].get(reverse("analyses:detail", args=[sub.pk])).content.decode()
    assert shown in page and 'id="score"' not in page and "<progress" not in page


def test_result_page_shows_scores_chart_data_gallery_and_versions(clients, users, finished) -> None:
    sub = finished(users["submitter"], score=0.8)
    page = clients["submitter"].get(reverse("analyses:detail", args=[sub.pk])).content.decode()
    assert 'id="verdict"' in page and "0.800" in page and "0.700" in page  # ensemble, tiny_a
    assert f'id="series-{sub.pk}"' in page and '"threshold": 0.5' in page
    assert page.count('class="artifact"') == 6 and 'data-toggle-member="tiny_b"' in page
    assert "a" * 64 in page and "b" * 64 in page
    assert "chart.js" in page and "progress.js" in page and "cdn" not in page.lower()
