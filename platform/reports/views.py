"""CSV downloads: own submissions, everyone's (moderators, with filters),
and one submission's frame-level scores."""

from __future__ import annotations

import datetime as dt

from django.contrib.auth.decorators import login_required
from django.db.models import QuerySet, Subquery
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    QueryDict,
    StreamingHttpResponse,
)
from django.views.decorators.http import require_GET

from accounts.roles import is_moderator
from analyses.access import get_visible
from analyses.models import Status, Submission, Verdict
from ensemble.errors import TrusttraceError
from moderation.models import Label
from moderation.services import DECISION, annotated, latest_decisions
from reports.csvexport import (
    SUBMISSION_COLUMNS,
    frame_header,
    frame_rows,
    stream_csv,
    submission_rows,
)


class FilterError(TrusttraceError, ValueError):
    """A CSV filter value that does not parse (answered with a 400 naming it)."""

    code = "bad_filter"


def _date(params: QueryDict, key: str) -> dt.date | None:
    value = params.get(key, "").strip()
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise FilterError(f"{key}={value!r} is not a date like 2026-11-30.") from None


def _choice(params: QueryDict, key: str, allowed: list[str]) -> str | None:
    value = params.get(key, "").strip()
    if not value:
        return None
    if value not in allowed:
        raise FilterError(f"{key}={value!r} is not one of {', '.join(allowed)}.")
    return value


def filtered_submissions(user: object, params: QueryDict) -> QuerySet[Submission]:
    """The submissions ``user`` may see (own for submitters, all for
    moderators), filtered by ``from``/``to`` (ISO dates, inclusive),
    ``verdict``, ``status``, ``decision`` (a decision label, or ``none``) and
    ``mine`` (``1``: only ``user``'s own, which for a submitter is everything
    they see anyway; "My submissions" links its export so for moderators too).

    A filter value that does not parse raises :class:`FilterError`: asking
    for a subset and getting everything is worse than an error."""
    moderator = is_moderator(user)  # type: ignore[arg-type]
    start, end = _date(params, "from"), _date(params, "to")
    verdict = _choice(params, "verdict", list(Verdict.values))
    status = _choice(params, "status", list(Status.values))
    decision = _choice(params, "decision", [*(v for v in Label.values if v), "none"])
    mine = _choice(params, "mine", ["1", "0"]) == "1"
    latest = latest_decisions(for_submitter=not moderator)
    qs = annotated(for_submitter=not moderator).annotate(
        decision_note=Subquery(latest.values("note")[:1])
    )
    if mine or not moderator:
        qs = qs.filter(owner_id=getattr(user, "pk", None))
    if start:
        qs = qs.filter(created__date__gte=start)
    if end:
        qs = qs.filter(created__date__lte=end)
    if verdict:
        qs = qs.filter(verdict=verdict)
    if status:
        qs = qs.filter(status=status)
    if decision == "none":
        qs = qs.filter(**{f"{DECISION}__isnull": True})
    elif decision:
        qs = qs.filter(**{DECISION: decision})
    return qs.order_by("-created")


def frame_members(sub: Submission) -> list[str]:
    """The member columns of a submission's frame CSV: its members, else the
    names its frame rows carry (a result from before members were stored)."""
    return sorted(sub.members) or sorted({m for r in sub.frame_rows for m in r.get("members", {})})


@login_required
@require_GET
def submissions_csv(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """Submissions as CSV (see README for the columns)."""
    try:
        qs = filtered_submissions(request.user, request.GET)
    except FilterError as e:
        return HttpResponseBadRequest(str(e), content_type="text/plain; charset=utf-8")
    return stream_csv("submissions.csv", SUBMISSION_COLUMNS, submission_rows(qs))


@login_required
@require_GET
def frames_csv(request: HttpRequest, pk: str) -> StreamingHttpResponse:
    """One submission's frame-level scores."""
    sub = get_visible(request.user, pk)
    members = frame_members(sub)
    return stream_csv(f"frames-{sub.pk}.csv", frame_header(members), frame_rows(sub, members))
