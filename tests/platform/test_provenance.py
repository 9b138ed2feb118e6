"""Content Credentials at upload: read in the probe's child, kept with the
submission, never a reason to refuse a file (issue 18).

Signed media is made with c2pa's own signing API and a CA created in the test
(tests/c2pa_signing.py); uploads go through the real service and probe, and
the analysis runs with the tiny test registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from analyses import services
from analyses.models import Status, Submission
from analyses.services import probing
from tests import media_factory as mf
from tests.c2pa_signing import (
    SIGNER_NAME,
    created_action,
    make_pki,
    sign,
    tamper_jpeg,
    truncate_jpeg_manifest,
)
from tests.platform.conftest import upload

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def pki():
    return make_pki("es256")


@pytest.fixture(scope="module")
def signed(pki, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("c2pa-uploads")
    plain_jpg = mf.write_image(d / "plain.jpg", mf.face_image(128), "JPEG")
    plain_mp4 = mf.write_clip(
        d / "plain.mp4", frames=12, width=192, height=144, face_at=(40, 20, 100)
    )
    ai = sign(plain_jpg, d / "ai.jpg", pki, actions=[created_action(when="2026-11-30T08:00Z")])
    return {
        "plain": plain_jpg,
        "ai": ai,
        "tampered": tamper_jpeg(ai, d / "tampered.jpg"),
        "truncated": truncate_jpeg_manifest(ai, d / "truncated.jpg"),
        "mp4": sign(plain_mp4, d / "signed.mp4", pki),
    }


@pytest.fixture
def trusted(site: Path, pki, tmp_path: Path, settings: Any) -> Path:
    """The test CA is a trust anchor of this site."""
    anchors = tmp_path / "anchors.pem"
    anchors.write_text(pki.ca_pem, encoding="ascii")
    settings.TRUSTTRACE = {**settings.TRUSTTRACE, "C2PA_TRUST_ANCHORS": str(anchors)}
    return anchors


def _submit_and_run(owner: Any, path: Path) -> Submission:
    sub = services.create_submission(owner, upload(path))
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    return sub


def test_ai_generated_jpeg_from_a_trusted_signer_is_valid_and_still_analyzed(
    site: Path, trusted: Path, users, signed
) -> None:
    sub = _submit_and_run(users["submitter"], signed["ai"])
    p = sub.provenance
    assert p["state"] == "valid", p["reason"]
    assert p["ai_generated"] and p["actions"][0]["source_type"] == "trainedAlgorithmicMedia"
    assert p["signer"].startswith(SIGNER_NAME) and p["created_at"] == "2026-11-30T08:00Z"
    assert sub.provenance_state == "valid" and sub.provenance_says_ai
    # Both are kept: the detectors' verdict is not replaced by the manifest.
    assert sub.status == Status.DONE, sub.reason
    assert sub.verdict in {"fake", "real", "uncertain", "no_face"}


def test_same_jpeg_without_the_anchor_is_untrusted(site: Path, users, signed) -> None:
    sub = services.create_submission(users["submitter"], upload(signed["ai"]))
    assert sub.provenance["state"] == "untrusted"
    assert "signingCredential.untrusted" in sub.provenance["codes"]
    assert sub.provenance_says_ai


def test_unreadable_trust_anchor_file_falls_back_to_the_library_defaults(
    site: Path, users, signed, settings: Any, tmp_path: Path
) -> None:
    settings.TRUSTTRACE = {**settings.TRUSTTRACE, "C2PA_TRUST_ANCHORS": str(tmp_path / "none")}
    sub = services.create_submission(users["submitter"], upload(signed["ai"]))
    assert sub.provenance["state"] == "untrusted"


def test_tampered_jpeg_is_invalid_and_analyzed(site: Path, trusted: Path, users, signed) -> None:
    sub = _submit_and_run(users["submitter"], signed["tampered"])
    assert sub.provenance["state"] == "invalid"
    assert "assertion.dataHash.mismatch" in sub.provenance["codes"]
    assert not sub.provenance_says_ai  # a manifest that does not match proves nothing
    assert sub.status == Status.DONE, sub.reason


def test_truncated_manifest_is_invalid_with_reason_and_the_analysis_still_runs(
    site: Path, users, signed
) -> None:
    sub = _submit_and_run(users["submitter"], signed["truncated"])
    assert sub.provenance["state"] == "invalid"
    assert sub.provenance["reason"].startswith("The Content Credentials could not be read:")
    assert sub.status == Status.DONE, sub.reason
    assert sub.verdict


def test_upload_without_a_manifest_is_absent(site: Path, users, signed) -> None:
    sub = services.create_submission(users["submitter"], upload(signed["plain"]))
    assert sub.provenance["state"] == "absent" and not sub.provenance_says_ai


def test_signed_mp4_upload_is_read_and_analyzed(site: Path, trusted: Path, users, signed) -> None:
    sub = _submit_and_run(users["submitter"], signed["mp4"])
    assert sub.kind == "video"
    assert sub.provenance["state"] == "valid", sub.provenance["reason"]
    assert sub.provenance["mime_type"] == "video/mp4"
    assert sub.status == Status.DONE, sub.reason


def test_rejected_media_is_still_refused_for_the_media_reason(site: Path, users, tmp_path) -> None:
    bad = mf.text_as_mp4(tmp_path / "text.mp4")
    with pytest.raises(services.UploadRejected) as e:
        services.create_submission(users["submitter"], upload(bad))
    assert e.value.code == "unsupported_format" and "text file" in str(e.value)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (("cap", "probe_timeout", "took longer than 20 s"), "stopped: it took longer than 20 s"),
        (("cap", "probe_memory", "needs more than 1024 MiB of memory"), "1024 MiB"),
        (("error", "the probe process ended with code -11"), "ended with code -11"),
    ],
)
def test_a_reader_that_does_not_answer_gives_unchecked_never_a_refusal(
    message: tuple[Any, ...], expected: str
) -> None:
    summary = probing._provenance_answer(message)
    assert summary["state"] == "unchecked"
    assert expected in summary["reason"]


def test_media_probe_alone_reads_no_credentials(site: Path, signed) -> None:
    info = probing.probe_media(signed["ai"], 1)
    assert info.format == "jpeg"
    assert probing.probe_upload(signed["plain"], 1).provenance["state"] == "absent"


# --- The result page, the review page and the queue --------------------------------


@pytest.fixture(scope="module")
def summaries(tmp_path_factory) -> dict[str, dict[str, Any]]:
    from tests.c2pa_signing import state_summaries

    return state_summaries(tmp_path_factory.mktemp("c2pa-states"))


def _with_provenance(sub: Submission, summary: dict[str, Any]) -> Submission:
    sub.provenance = summary
    sub.save(update_fields=["provenance"])
    return sub


PANEL_TEXT = {
    "valid": "Signed, unchanged since signing, by a signer on the trust list.",
    "untrusted": "the signer's certificate is not on the trust list",
    "invalid": "Content Credentials that do not verify",
    "absent": "their absence says nothing about whether it is real or fake",
    "unchecked": "Not checked: The C2PA library does not read Content Credentials from MKV",
}


@pytest.mark.parametrize("state", sorted(PANEL_TEXT))
def test_result_page_shows_the_content_credentials_panel_for_each_state(
    state: str, clients, users, finished, summaries
) -> None:
    from django.urls import reverse

    sub = _with_provenance(
        finished(users["submitter"], verdict="real", score=0.2), summaries[state]
    )
    page = clients["submitter"].get(reverse("analyses:detail", args=[sub.pk])).content.decode()
    assert f'id="provenance" data-state="{state}"' in page
    assert PANEL_TEXT[state] in page
    # The detectors' verdict stays; the manifest never replaces it.
    assert 'id="verdict"' in page
    says_ai = state in ("valid", "untrusted")
    assert ('id="provenance-ai"' in page) is says_ai
    assert ("made by a generative AI model" in page) is says_ai
    if state in ("valid", "untrusted", "invalid"):
        assert "Trusttrace test signer" in page and "trainedAlgorithmicMedia" in page
    if state == "invalid":
        assert 'role="alert"' in page and "assertion.dataHash.mismatch" in page


def test_submission_uploaded_before_credentials_were_read_says_not_checked(
    clients, users, finished
) -> None:
    from django.urls import reverse

    sub = finished(users["submitter"])
    page = clients["submitter"].get(reverse("analyses:detail", args=[sub.pk])).content.decode()
    assert 'data-state="none"' in page
    assert "uploaded before Content Credentials were read" in page


def test_review_page_shows_the_panel_and_the_queue_filters_on_it(
    clients, users, finished, summaries
) -> None:
    from django.urls import reverse

    subs = {
        state: _with_provenance(finished(users["submitter"], title=state), summaries[state])
        for state in ("valid", "untrusted", "invalid", "absent", "unchecked")
    }
    old = finished(users["submitter"], title="before")  # never read
    review = clients["moderator"].get(reverse("moderation:review", args=[subs["invalid"].pk]))
    assert 'data-state="invalid"' in review.content.decode()

    def listed(value: str) -> set[str]:
        page = clients["moderator"].get(
            reverse("moderation:queue"), {"state": "all", "provenance": value}
        )
        assert page.status_code == 200
        return {s.title for s, _ in page.context["rows"]}

    assert listed("ai_generated") == {"valid", "untrusted"}
    assert listed("valid") == {"valid"}
    assert listed("untrusted") == {"untrusted"}
    assert listed("invalid") == {"invalid"}
    assert listed("absent") == {"absent"}
    assert listed("unchecked") == {"unchecked", old.title}
    assert listed("nonsense") == {*subs, old.title}
    page = clients["moderator"].get(reverse("moderation:queue"), {"state": "all"}).content
    assert b'id="provenance-filter"' in page and b"badge-c2pa-ai" in page


def test_analyze_json_has_a_provenance_object_per_file(
    site: Path, signed, tmp_path: Path, capsys
) -> None:
    import json

    from django.core.management import call_command

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("ai", "plain", "truncated"):
        (folder / f"{name}.jpg").write_bytes(signed[name].read_bytes())
    out = tmp_path / "o.json"
    call_command("analyze", str(folder), "--json", str(out))
    results = {Path(r["file"]).stem: r for r in json.loads(out.read_text())["results"]}
    assert results["ai"]["provenance"]["state"] == "untrusted"
    assert results["ai"]["provenance"]["ai_generated"] is True
    assert results["plain"]["provenance"]["state"] == "absent"
    assert results["truncated"]["provenance"]["state"] == "invalid"
    assert results["truncated"]["status"] == "done"  # analysed all the same
    assert "ai.jpg: Content Credentials untrusted, says AI-generated" in capsys.readouterr().out


def test_site_states_match_the_detection_core() -> None:
    from analyses.models import PROVENANCE_STATES
    from ensemble.provenance import STATES

    assert tuple(PROVENANCE_STATES) == tuple(STATES)
