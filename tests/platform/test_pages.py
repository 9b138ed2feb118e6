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
    # A member set to score faces mirrored too: said, and a fit made on faces
    # as is is not applied to it.
    from django.conf import settings
    from django.test import override_settings

    write_calibration(weights, EnsembleCalibration(shas, 1.87, 0.47))
    with override_settings(TRUSTTRACE={**settings.TRUSTTRACE, "MIRROR": (first,)}):
        page = clients["anonymous"].get(reverse("analyses:models")).content.decode()
    assert f"{first} scoring each face as is and mirrored" in page
    assert f"fitted on faces scored as is only by {first}, which now scores them" in page


def test_models_page_says_plainly_when_weights_are_missing(no_weights_site: Path, clients) -> None:
    for role in ("anonymous", "submitter", "moderator"):
        page = clients[role].get(reverse("analyses:models")).content.decode()
        assert "cannot analyse media yet" in page
        assert "No weights are installed for detector" in page
        # Before: the server's weights folder and the commands to fill it, to anyone.
        assert str(no_weights_site) not in page and "train_detector" not in page, role
    # Staff see where the weights are expected and how to install them.
    page = clients["admin"].get(reverse("analyses:models")).content.decode()
    assert str(no_weights_site) in page and "train_detector" in page


def test_progress_json_and_bar_while_running(clients, users, finished) -> None:
    sub = finished(users["submitter"])
    Submission.objects.filter(pk=sub.pk).update(status="running", stage="tiny_a", percent=42)
    data = clients["submitter"].get(reverse("analyses:progress", args=[sub.pk])).json()
    assert data == {
        "id": str(sub.pk),
        "status": "running",
        "stage": "tiny_a",
        "percent": 42,
        "finished": False,
        "verdict": "fake",
        "score": 0.8,
        "reason": None,
    }
    page = clients["submitter"].get(reverse("analyses:detail", args=[sub.pk])).content.decode()
    assert '<progress id="progress" max="100" value="42">' in page
    assert 'id="verdict"' not in page  # no result shown before it is done


@pytest.mark.parametrize(
    ("status", "reason", "shown"),
    [
        ("rejected", "The file is empty.", "Rejected: The file is empty."),
        (
            "failed",
            "The analysis stopped because of an internal error (OSError).",
            "internal error (OSError)",
        ),
    ],
)
def test_rejected_and_failed_show_their_reason_and_no_score(
    clients, users, finished, status: str, reason: str, shown: str
) -> None:
    sub = finished(users["submitter"])
    Submission.objects.filter(pk=sub.pk).update(
        status=status, reason=reason, verdict="", score=None
    )
    page = clients["submitter"].get(reverse("analyses:detail", args=[sub.pk])).content.decode()
    assert shown in page and 'id="score"' not in page and "<progress" not in page


def _with_scores(sub: Submission, scores: dict[int, float]) -> Submission:
    """Give the chart points of ``sub`` (person 0) the frame -> score map ``scores``."""
    series = dict(sub.series)
    series["persons"] = [
        {"id": 0, "points": [{**pt, "score": scores[pt["frame"]]} for pt in p["points"]]}
        for p in series["persons"]
    ]
    Submission.objects.filter(pk=sub.pk).update(series=series)
    sub.refresh_from_db()
    return sub


def test_result_page_leads_with_the_badge_score_sentence_and_member_bars(
    clients, users, finished
) -> None:
    from analyses.models import Submission

    sub = finished(users["submitter"], verdict="fake", score=0.8)
    # The ensemble's score apart from the frame and person scores (0.8) of the series.
    Submission.objects.filter(pk=sub.pk).update(score=0.83)
    page = clients["submitter"].get(reverse("analyses:detail", args=[sub.pk])).content.decode()
    assert '<span class="badge badge-fake" id="verdict">Fake</span>' in page
    assert (
        '<span class="big-score" id="score" title="calibrated ensemble score">0.830</span>' in page
    )
    assert 'id="sentence"' in page and "above the uncertain band" in page
    # tiny_a 0.7 and tiny_b 0.9 against 0.5 +- 0.1: on the fake side, bars 70% and 90% wide.
    assert 'data-member="tiny_a" data-score="0.700" data-side="fake"' in page
    assert 'data-member="tiny_b" data-score="0.900" data-side="fake"' in page
    assert 'style="width: 70.0%"' in page and 'style="width: 90.0%"' in page
    assert 'style="left: 40.0%; width: 20.0%"' in page  # the uncertain band
    assert "Status:" not in page and 'id="status"' not in page  # said once: the badge
    assert "a" * 64 in page and "b" * 64 in page


def test_a_real_verdict_says_what_the_detectors_do_not_recognise(clients, users, finished):
    sub = finished(users["submitter"], verdict="real", score=0.2)
    page = clients["submitter"].get(reverse("analyses:detail", args=[sub.pk])).content.decode()
    assert "below the uncertain band" in page and "not proof the media is authentic" in page
    assert "do not recognise faces generated whole by an image model" in page


def test_result_page_has_one_viewer_on_the_most_suspicious_face_not_a_gallery(
    clients, users, finished
) -> None:
    sub = _with_scores(finished(users["submitter"]), {0: 0.6, 5: 0.9})
    page = clients["submitter"].get(reverse("analyses:detail", args=[sub.pk])).content.decode()
    face5 = sub.artifacts.get(kind="face", frame=5)
    gradcam5 = sub.artifacts.get(kind="gradcam", frame=5, member="tiny_a")
    assert 'data-frame="5" data-person="0"' in page  # the viewer starts on the top frame
    assert f'id="viewer-face" src="/s/{sub.pk}/artifacts/{face5.pk}"' in page
    assert f'src="/s/{sub.pk}/artifacts/{gradcam5.pk}"' in page  # first tab, over the face
    tabs = ['data-tab="gradcam:tiny_a"', 'data-tab="gradcam:tiny_b"', 'data-tab="ssim_temporal"']
    assert all(t in page for t in tabs)
    assert page.index(tabs[0]) < page.index(tabs[1]) < page.index(tabs[2])
    assert page.count("not proof of where") == 1  # the long text, once
    assert 'id="opacity"' in page and 'id="show-overlay"' in page and 'id="inset-img"' in page
    # The filmstrip: most suspicious first; no wall of overlays.
    strip = page[page.index('id="filmstrip"') : page.index('id="all-frames"')]
    assert strip.index('data-frame="5"') < strip.index('data-frame="0"')
    assert page.count("<img") <= 8
    link = 'href="?frames=all&amp;person=0#filmstrip" id="all-frames">Show all 2 frames of person 0'
    assert link in page
    assert f'id="series-{sub.pk}"' in page and 'id="viewer-data"' in page
    for script in ("chart.js", "viewer.js", "progress.js"):
        assert f"/static/trusttrace/{script}" in page
    assert "cdn" not in page.lower() and "https://" not in page


def test_viewer_data_describes_every_face_with_its_layers(clients, users, finished) -> None:
    import json
    import re

    sub = finished(users["submitter"])
    page = clients["submitter"].get(reverse("analyses:detail", args=[sub.pk])).content.decode()
    raw = re.search(r'<script id="viewer-data" type="application/json">(.*?)</script>', page, re.S)
    assert raw is not None
    data = json.loads(raw.group(1))
    assert [(e["person"], e["frame"]) for e in data["entries"]] == [(0, 0), (0, 5)]
    entry = data["entries"][0]
    assert entry["box"] == [0.2, 0.1, 0.6, 0.7] and entry["members"] == {
        "tiny_a": 0.7,
        "tiny_b": 0.9,
    }
    assert set(entry["layers"]) == {"gradcam:tiny_a", "gradcam:tiny_b", "ssim_temporal"}
    assert entry["face"] and entry["whole"] and data["persons"] == [0]
    assert [t["overlay"] for t in data["tabs"]] == [True, True, False]


def test_show_all_frames_lists_every_frame_in_time_order(clients, users, finished) -> None:
    sub = _with_scores(finished(users["submitter"]), {0: 0.6, 5: 0.9})
    url = reverse("analyses:detail", args=[sub.pk]) + "?frames=all"
    page = clients["submitter"].get(url).content.decode()
    strip = page[page.index('id="filmstrip"') : page.index('id="top-frames"')]
    assert strip.index('data-frame="0"') < strip.index('data-frame="5"')
    assert 'data-all="1"' in page


def test_an_image_gets_the_same_viewer_with_one_frame_and_no_chart(
    clients, users, finished, site
) -> None:
    from analyses import services
    from tests.platform.conftest import write_index

    sub = finished(users["submitter"])
    out = services.artifact_dir(sub)
    write_index(out, frames=(0,))
    services.load_index_file(sub, out)
    page = clients["submitter"].get(reverse("analyses:detail", args=[sub.pk])).content.decode()
    assert 'id="viewer"' in page and 'id="viewer-face"' in page
    assert 'id="chart"' not in page and 'id="filmstrip"' not in page


def test_weights_versions_keep_the_calibration_last_seen(site: Path, tmp_path: Path) -> None:
    """calibrate_member changes a member's temperature and bias, not its
    weights: the version row is the same and says the new calibration."""
    import shutil

    from django.conf import settings
    from django.test import override_settings

    from analyses.models import WeightsVersion
    from analyses.services import record_weights_versions
    from ensemble.weights import recalibrate_manifest

    weights = shutil.copytree(settings.TRUSTTRACE["WEIGHTS_DIR"], tmp_path / "weights")
    with override_settings(TRUSTTRACE={**settings.TRUSTTRACE, "WEIGHTS_DIR": weights}):
        members = models_status()
        record_weights_versions(members)
        first = members[0]
        row = WeightsVersion.objects.get(member=first.name)
        assert (row.temperature, row.bias) == (first.temperature, first.bias) == (1.0, 0.0)
        recalibrate_manifest(
            weights, first.name, temperature=0.8, bias=-0.3, threshold=0.45, record={"n": 9}
        )
        record_weights_versions(models_status())
    rows = WeightsVersion.objects.filter(member=first.name)
    assert [(r.weights_sha256, r.temperature, r.bias) for r in rows] == [
        (first.weights_sha256, 0.8, -0.3)
    ]
    assert rows[0].provenance["calibrations"][0]["n"] == 9
    assert WeightsVersion.objects.count() == len(members)
