"""CSV downloads: own submissions, everyone's (moderators, with filters),
and one submission's frame-level scores."""

from __future__ import annotations

import datetime as dt

from django.contrib.auth.decorators import login_required
from django.db.models import QuerySet, Subquery
from django.http import HttpRequest, QueryDict, StreamingHttpResponse
from django.views.decorators.http import require_GET

from accounts.roles import is_moderator
from analyses.access import get_visible
from analyses.models import Status, Submission, Verdict
from moderation.models import Label
from moderation.services import DECISION, annotated, latest_decisions
from reports.csvexport import (
    SUBMISSION_COLUMNS,
    frame_header,
    frame_rows,
    stream_csv,
    submission_rows,
)


def _date(value: str | None) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if value else None
    except ValueError:
        return None


def filtered_submissions(user: object, params: QueryDict) -> QuerySet[Submission]:
    """Own submissions for submitters; all, filtered, for moderators.

    Filters (moderators): ``from``/``to`` (ISO dates, inclusive), ``verdict``,
    ``status``, ``decision`` (a decision label, or ``none``).
    """
    moderator = is_moderator(user)  # type: ignore[arg-type]
    latest = latest_decisions(for_submitter=not moderator)
    qs = annotated(for_submitter=not moderator).annotate(
        decision_note=Subquery(latest.values("note")[:1])
    )
    if not moderator:
        return qs.filter(owner_id=getattr(user, "pk", None)).order_by("-created")
    if start := _date(params.get("from")):
        qs = qs.filter(created__date__gte=start)
    if end := _date(params.get("to")):
        qs = qs.filter(created__date__lte=end)
    if (verdict := params.get("verdict")) in Verdict.values:
        qs = qs.filter(verdict=verdict)
    if (status := params.get("status")) in Status.values:
        qs = qs.filter(status=status)
    decision = params.get("decision")
    if decision == "none":
        qs = qs.filter(**{f"{DECISION}__isnull": True})
    elif decision and decision in Label.values:
        qs = qs.filter(**{DECISION: decision})
    return qs.order_by("-created")


@login_required
@require_GET
def submissions_csv(request: HttpRequest) -> StreamingHttpResponse:
    """Submissions as CSV (see README for the columns)."""
    qs = filtered_submissions(request.user, request.GET)
    return stream_csv("submissions.csv", SUBMISSION_COLUMNS, submission_rows(qs))


@login_required
@require_GET
def frames_csv(request: HttpRequest, pk: str) -> StreamingHttpResponse:
    """One submission's frame-level scores."""
    sub = get_visible(request.user, pk)
    members = sorted(sub.members) or sorted(
        {m for r in sub.frame_rows for m in r.get("members", {})}
    )
    return stream_csv(f"frames-{sub.pk}.csv", frame_header(members), frame_rows(sub, members))
