"""Streaming CSV with cells neutralised against spreadsheet formula injection."""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import StreamingHttpResponse

from analyses.models import PROVENANCE_INTACT, Submission
from moderation.models import Report

logger = logging.getLogger(__name__)


def incomplete_notice(rows: int) -> str:
    """The last row of an export that failed after ``rows`` rows had been
    sent (a streaming response cannot become an error page then): the file
    must not pass for the whole export."""
    return (
        f"# INCOMPLETE: the export stopped after {rows} row{'' if rows == 1 else 's'} "
        "because of an error on the server. This file is not the whole export; "
        "download it again."
    )


# A cell starting with one of these is read as a formula by spreadsheets.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

SUBMISSION_COLUMNS = (
    "id",
    "created",
    "finished",
    "owner",
    "title",
    "original_name",
    "kind",
    "format",
    "sha256",
    "status",
    "reason_code",
    "reason",
    "verdict",
    "score",
    "threshold",
    "uncertain_band",
    "member_scores",
    "model_versions",
    "model_backends",
    "model_calibrations",
    "combination",
    "decision",
    "decision_note",
    # Requests for review of the verdict: all of them, and those waiting.
    "disputes",
    "disputes_open",
    # The file's C2PA Content Credentials as read at upload (empty: never read).
    "provenance",
    "provenance_reason",
    "provenance_signer",
    "provenance_issuer",
    "provenance_claim_generator",
    "provenance_created",
    "provenance_ai_generated",
    "provenance_actions",
    "provenance_ingredients",
)


def safe_cell(value: object) -> str:
    """Text for one CSV cell; formula-like text gets a leading apostrophe.

    Numbers are written as numbers (a negative number is data, not a formula).
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    text = str(value)
    if text.startswith(FORMULA_PREFIXES):
        return "'" + text
    return text


class _Echo:
    def write(self, value: str) -> str:
        return value


def stream_csv(
    filename: str, header: Sequence[str], rows: Iterable[Sequence[object]]
) -> StreamingHttpResponse:
    """A streaming CSV download; every cell goes through :func:`safe_cell`."""
    writer = csv.writer(_Echo())

    def lines() -> Iterator[str]:
        yield writer.writerow([safe_cell(h) for h in header])
        sent = 0
        try:
            for row in rows:
                yield writer.writerow([safe_cell(c) for c in row])
                sent += 1
        except Exception:
            logger.exception("CSV export %s failed after %d rows", filename, sent)
            # Said in the file, then raised: the server ends the response as
            # failed (a chunked download is then marked as failed by the client).
            yield writer.writerow([incomplete_notice(sent)])
            raise

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    # Owner names, hashes and moderators' notes: as private as the uploads.
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _reports_counted(**filters: object) -> Coalesce:
    """How many of the outer submission's reports match ``filters`` (a
    subquery: no join, so no grouping of the export's rows)."""
    counted = (
        Report.objects.filter(submission=OuterRef("pk"), **filters)
        .order_by()
        .values("submission")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))


def submission_rows(qs: QuerySet[Submission]) -> Iterator[list[object]]:
    """One row per submission, in :data:`SUBMISSION_COLUMNS` order (``qs`` must
    carry the moderation annotations ``decision_label`` and ``decision_note``).
    Each row counts the submission's requests for review, all and open."""
    qs = qs.annotate(disputes=_reports_counted(), disputes_open=_reports_counted(resolved=False))
    for s in qs.iterator(chunk_size=500):
        yield [
            str(s.pk),
            s.created,
            s.finished,
            s.owner.username,
            s.title,
            s.original_name,
            s.kind,
            s.media_format,
            s.sha256,
            s.status,
            s.reason_code,
            s.reason,
            s.verdict,
            s.score,
            s.threshold,
            s.uncertain_band,
            json.dumps(s.members, sort_keys=True),
            json.dumps(s.model_versions, sort_keys=True),
            json.dumps(model_backends(s.result), sort_keys=True),
            json.dumps(model_calibrations(s.result), sort_keys=True),
            json.dumps((s.result or {}).get("combination", {}), sort_keys=True),
            getattr(s, "decision_label", None) or "",
            getattr(s, "decision_note", None) or "",
            s.disputes,
            s.disputes_open,
            *provenance_cells(s.provenance),
        ]


def provenance_cells(p: dict[str, Any] | None) -> list[Any]:
    """The ``provenance*`` columns of one submission: state, reason, signer,
    issuer, claim generator, creation time, whether a manifest whose signature
    and binding check out declares AI (``true``/``false``), the actions as a
    JSON list of ``"action (source type)"``, the ingredient titles as JSON."""
    if not isinstance(p, dict) or not p.get("state"):
        return [""] * 9
    actions = [
        a.get("action", "") + (f" ({a['source_type']})" if a.get("source_type") else "")
        for a in p.get("actions") or []
        if isinstance(a, dict)
    ]
    intact = p["state"] in PROVENANCE_INTACT
    return [
        p["state"],
        p.get("reason", ""),
        p.get("signer", ""),
        p.get("issuer", ""),
        p.get("claim_generator", ""),
        p.get("created_at") or p.get("signed_at", ""),
        bool(p.get("ai_generated")) and intact,
        json.dumps(actions),
        json.dumps(list(p.get("ingredients") or [])),
    ]


def model_backends(result: dict[str, Any] | None) -> dict[str, str]:
    """``member -> "backend/precision"`` as the worker ran them, with
    ``+mirror`` for a member that scored each face as is and mirrored (empty
    before a result; results from before either was recorded ran torch/fp32,
    as is)."""
    return {
        m["name"]: f"{m.get('backend', 'torch')}/{m.get('precision', 'fp32')}"
        + ("+mirror" if m.get("mirrored") else "")
        for m in (result or {}).get("models", [])
    }


def model_calibrations(result: dict[str, Any] | None) -> dict[str, dict[str, float]]:
    """``member -> {"temperature": T, "bias": b}``: the calibration each member's
    score went through, ``sigmoid(logit / T + b)`` (``ensemble.scoring.calibrate``).
    The weights' sha256 alone does not say it: ``calibrate_member`` refits it
    under the same weights. Empty before a result; results from before biases
    were recorded had none (0)."""
    return {
        m["name"]: {"temperature": m["temperature"], "bias": m.get("bias", 0.0)}
        for m in (result or {}).get("models", [])
        if m.get("temperature") is not None
    }


def frame_header(members: Sequence[str]) -> list[str]:
    """Frame CSV columns: frame, time, person, one per member, ensemble score."""
    return ["frame", "time", "person", *members, "score"]


def frame_rows(sub: Submission, members: Sequence[str]) -> Iterator[list[object]]:
    """One row per sampled frame and person."""
    for r in sub.frame_rows:
        yield [
            r["frame"],
            r["time"],
            r["person"],
            *(r["members"].get(m) for m in members),
            r["score"],
        ]
