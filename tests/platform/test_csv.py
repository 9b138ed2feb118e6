"""CSV exports: own vs all, filters, frame-level rows, formula injection."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

import pytest
from django.db import OperationalError
from django.db.models import QuerySet
from django.test import Client
from django.urls import reverse

from analyses.models import Submission
from moderation.services import decide, file_report
from reports import csvexport
from reports.csvexport import SUBMISSION_COLUMNS, model_calibrations, safe_cell, stream_csv

pytestmark = pytest.mark.django_db


def _rows(response) -> list[dict[str, str]]:
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/csv")
    text = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"),
        ("\rcmd", "'\rcmd"),
        ("plain title", "plain title"),
        (-0.25, "-0.25"),
        (None, ""),
    ],
)
def test_formula_like_cells_are_neutralised(value, cell) -> None:
    assert safe_cell(value) == cell


def test_submitter_exports_only_own_rows_with_injection_neutralised(
    clients, users, finished
) -> None:
    finished(users["submitter"], title="=cmd|' /C calc'!A0")
    finished(users["other"], title="bob's")
    response = clients["submitter"].get(reverse("reports:submissions"))
    # Owner names, hashes and notes: never kept by a cache on the way.
    assert response["Cache-Control"] == "private, no-store"
    assert response["X-Content-Type-Options"] == "nosniff"
    rows = _rows(response)
    assert list(rows[0]) == list(SUBMISSION_COLUMNS)
    assert [r["title"] for r in rows] == ["'=cmd|' /C calc'!A0"]
    assert rows[0]["owner"] == "alice" and float(rows[0]["score"]) == pytest.approx(0.8)
    assert json.loads(rows[0]["model_backends"]) == {
        "tiny_a": "openvino/bf16",
        "tiny_b": "openvino/bf16+mirror",  # each face scored as is and mirrored
    }
    # The same weights can score differently after calibrate_member: the
    # calibration each member went through is in the report too.
    assert json.loads(rows[0]["model_calibrations"]) == {
        "tiny_a": {"temperature": 1.0, "bias": 0.0},
        "tiny_b": {"temperature": 0.87, "bias": 0.25},
    }
    assert json.loads(rows[0]["combination"]) == {"method": "mean"}


def test_model_calibrations_of_results_before_biases_and_without_a_result() -> None:
    older = {"models": [{"name": "m", "weights_sha256": "a" * 64, "temperature": 1.2}]}
    assert model_calibrations(older) == {"m": {"temperature": 1.2, "bias": 0.0}}
    unknown = {"models": [{"name": "m", "weights_sha256": None, "temperature": None}]}
    assert model_calibrations(unknown) == {}
    assert model_calibrations({}) == model_calibrations(None) == {}


def test_moderator_exports_all_with_filters(clients, users, finished) -> None:
    a = finished(users["submitter"], verdict="fake", score=0.9, title="a")
    finished(users["other"], verdict="real", score=0.1, title="b")
    decide(a, users["moderator"], "override_real", "=evil note")
    url = reverse("reports:submissions")
    assert {r["title"] for r in _rows(clients["moderator"].get(url))} == {"a", "b"}
    assert [r["title"] for r in _rows(clients["moderator"].get(url, {"verdict": "real"}))] == ["b"]
    by_decision = _rows(clients["moderator"].get(url, {"decision": "real"}))
    assert [(r["title"], r["decision"], r["decision_note"]) for r in by_decision] == [
        ("a", "real", "'=evil note")
    ]
    assert [r["title"] for r in _rows(clients["moderator"].get(url, {"decision": "none"}))] == ["b"]
    assert _rows(clients["moderator"].get(url, {"status": "failed"})) == []
    assert _rows(clients["moderator"].get(url, {"from": "2999-01-01"})) == []
    today = Submission.objects.first().created.date().isoformat()
    assert len(_rows(clients["moderator"].get(url, {"from": today, "to": today}))) == 2


def test_submitters_filter_their_own_rows_only(clients, users, finished) -> None:
    finished(users["other"], verdict="real", title="theirs")
    finished(users["submitter"], verdict="fake", title="mine")
    finished(users["submitter"], verdict="real", title="mine too")
    url = reverse("reports:submissions")
    assert [r["title"] for r in _rows(clients["submitter"].get(url, {"verdict": "real"}))] == [
        "mine too"
    ]
    assert {r["title"] for r in _rows(clients["submitter"].get(url))} == {"mine", "mine too"}


def test_my_submissions_exports_the_callers_own_rows_for_moderators_too(
    clients, users, finished
) -> None:
    """The export link of "My submissions" gave a moderator everyone's rows."""
    finished(users["submitter"], title="alice's")
    finished(users["moderator"], title="mona's")
    page = clients["moderator"].get(reverse("analyses:list")).content.decode()
    link = f'href="{reverse("reports:submissions")}?mine=1" id="export-mine"'
    assert link in page
    url = reverse("reports:submissions")
    assert [r["title"] for r in _rows(clients["moderator"].get(url, {"mine": "1"}))] == ["mona's"]
    assert {r["title"] for r in _rows(clients["moderator"].get(url))} == {"alice's", "mona's"}
    assert [r["title"] for r in _rows(clients["submitter"].get(url, {"mine": "1"}))] == ["alice's"]
    assert [r["title"] for r in _rows(clients["submitter"].get(url, {"mine": "0"}))] == ["alice's"]


@pytest.mark.parametrize(
    ("params", "said"),
    [
        ({"from": "2024-13-40"}, "from='2024-13-40' is not a date"),
        ({"to": "01/02/2024"}, "to='01/02/2024' is not a date"),
        ({"verdict": "FAKE"}, "verdict='FAKE' is not one of"),
        ({"status": "finished"}, "status='finished' is not one of"),
        ({"decision": "maybe"}, "decision='maybe' is not one of"),
        ({"mine": "yes"}, "mine='yes' is not one of"),
    ],
)
def test_a_filter_that_does_not_parse_is_a_400_naming_it_not_everything(
    clients, users, finished, params, said
) -> None:
    from rest_framework.authtoken.models import Token

    finished(users["submitter"], verdict="fake")
    for who in ("submitter", "moderator"):
        page = clients[who].get(reverse("reports:submissions"), params)
        assert page.status_code == 400 and said in page.content.decode(), who
        token = Token.objects.get_or_create(user=users[who])[0]
        api = Client(HTTP_AUTHORIZATION=f"Token {token.key}")
        answer = api.get("/api/submissions/export-csv/", params)
        assert answer.status_code == 400 and said in answer.json()["detail"], who
        assert answer.json()["code"] == "bad_filter"


def test_frame_csv_has_one_row_per_frame_and_person(clients, users, finished) -> None:
    sub = finished(users["submitter"], score=0.7)
    rows = _rows(clients["submitter"].get(reverse("reports:frames", args=[sub.pk])))
    assert list(rows[0]) == ["frame", "time", "person", "tiny_a", "tiny_b", "score"]
    assert [r["frame"] for r in rows] == ["0", "5"]
    assert float(rows[0]["tiny_a"]) == pytest.approx(0.6)
    assert float(rows[0]["score"]) == pytest.approx(0.7)


def test_submissions_csv_has_the_content_credentials_columns(
    clients, users, finished, tmp_path
) -> None:
    from tests.c2pa_signing import state_summaries

    summaries = state_summaries(tmp_path)
    for state in ("valid", "invalid", "absent"):
        sub = finished(users["submitter"], title=state)
        sub.provenance = summaries[state]
        sub.save(update_fields=["provenance"])
    finished(users["submitter"], title="before")  # uploaded before they were read
    rows = {r["title"]: r for r in _rows(clients["submitter"].get(reverse("reports:submissions")))}
    valid = rows["valid"]
    assert valid["provenance"] == "valid" and valid["provenance_ai_generated"] == "true"
    assert valid["provenance_signer"].startswith("Trusttrace test signer")
    assert valid["provenance_issuer"].startswith("Trusttrace test root CA")
    assert valid["provenance_claim_generator"] == "trusttrace-tests 1.0"
    assert valid["provenance_created"] == "2026-11-30T08:00:00Z"
    assert json.loads(valid["provenance_actions"]) == ["c2pa.created (trainedAlgorithmicMedia)"]
    assert json.loads(valid["provenance_ingredients"]) == []
    invalid = rows["invalid"]
    assert (
        invalid["provenance"] == "invalid" and "dataHash.mismatch" in invalid["provenance_reason"]
    )
    # A declaration in a manifest that does not match the file is not counted.
    assert invalid["provenance_ai_generated"] == "false"
    assert rows["absent"]["provenance"] == "absent"
    assert rows["absent"]["provenance_ai_generated"] == "false"
    assert rows["before"]["provenance"] == "" and rows["before"]["provenance_ai_generated"] == ""


def test_submissions_csv_counts_each_verdicts_requests_for_review(clients, users, finished) -> None:
    disputed = finished(users["submitter"], title="disputed")
    file_report(disputed, users["submitter"], "that is me, filmed by my phone")
    decide(disputed, users["moderator"], "override_real", "checked the source")
    file_report(disputed, users["submitter"], "the chart is wrong too")
    finished(users["submitter"], title="quiet")
    for who in ("submitter", "moderator"):
        rows = {r["title"]: r for r in _rows(clients[who].get(reverse("reports:submissions")))}
        assert (rows["disputed"]["disputes"], rows["disputed"]["disputes_open"]) == ("2", "1")
        assert (rows["quiet"]["disputes"], rows["quiet"]["disputes_open"]) == ("0", "0")
    # The API's export is the same table.
    api = _rows(clients["submitter"].get("/api/submissions/export-csv/"))
    assert {r["title"]: r["disputes_open"] for r in api} == {"disputed": "1", "quiet": "0"}


def test_an_export_that_fails_midway_ends_with_a_row_saying_it_is_incomplete(caplog) -> None:
    """Rows already sent cannot become an error page: the file's last row
    says it is not the whole export, and the error still reaches the server
    (which ends the response as failed) and the log."""

    def rows() -> Iterator[list[object]]:
        yield ["a", 1]
        yield ["b", 2]
        raise RuntimeError("database went away")

    response = stream_csv("x.csv", ["name", "n"], rows())
    chunks = []
    with pytest.raises(RuntimeError, match="database went away"):
        for chunk in response.streaming_content:
            chunks.append(chunk)
    lines = list(csv.reader(io.StringIO(b"".join(chunks).decode())))
    assert lines[:3] == [["name", "n"], ["a", "1"], ["b", "2"]]
    assert lines[3] == [csvexport.incomplete_notice(2)] and "stopped after 2 rows" in lines[3][0]
    assert "CSV export x.csv failed after 2 rows" in caplog.text


def test_a_submissions_export_failing_on_the_database_says_so_in_the_file(
    clients, users, finished, monkeypatch
) -> None:
    finished(users["submitter"], title="first")
    finished(users["submitter"], title="second")
    real_rows = csvexport.submission_rows

    def failing(qs: QuerySet[Submission]) -> Iterator[list[object]]:
        rows = real_rows(qs)
        yield next(rows)
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr("reports.views.submission_rows", failing)
    response = clients["submitter"].get(reverse("reports:submissions"))
    assert response.status_code == 200  # the header went out before the failure
    chunks = []
    with pytest.raises(OperationalError, match="closed the connection"):
        for chunk in response.streaming_content:
            chunks.append(chunk)
    lines = list(csv.reader(io.StringIO(b"".join(chunks).decode())))
    assert len(lines) == 3
    assert lines[-1][0].startswith("# INCOMPLETE: the export stopped after 1 row ")
