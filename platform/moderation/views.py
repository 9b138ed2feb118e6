"""Moderator pages: queue, review, decide, re-run, dashboard."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from accounts.roles import is_moderator, signed_in
from analyses import services as analyses_services
from analyses.access import get_visible
from analyses.models import PROVENANCE_INTACT, Status, Submission, Verdict
from analyses.viewer import thumbnails
from analyses.views import result_context
from moderation import services
from moderation.models import Action, Label

View = Callable[..., HttpResponse]
PAGE_SIZE = 50
# The queue's Content Credentials filter (``?provenance=``): a state of
# ensemble.provenance, or ``ai_generated`` (an intact manifest says a
# generative model made or changed the media).
AI_GENERATED = "ai_generated"
PROVENANCE_FILTERS = (
    (AI_GENERATED, "AI-generated (signed)"),
    ("valid", "valid"),
    ("untrusted", "signer not verified"),
    ("invalid", "invalid"),
    ("absent", "none"),
    ("unchecked", "not checked"),
)


def filter_provenance(qs: QuerySet[Submission], value: str) -> QuerySet[Submission]:
    """``qs`` narrowed to the Content Credentials filter ``value`` (unknown: all)."""
    if value == AI_GENERATED:
        return qs.filter(provenance__ai_generated=True, provenance__state__in=PROVENANCE_INTACT)
    if value == "unchecked":
        # Submissions uploaded before the manifests were read have none.
        return qs.filter(Q(provenance__state="unchecked") | Q(provenance={}))
    if value in dict(PROVENANCE_FILTERS):
        return qs.filter(provenance__state=value)
    return qs


def moderator_required(view: View) -> View:
    """Signed-in moderators and admins only; everyone else gets a 404."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not is_moderator(request.user):
            raise Http404("No such page.")
        return view(request, *args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class QueueFilters:
    """The queue's state, verdict, sort and provenance filters, read from a
    request (the query string, or the decision form's hidden fields) and
    carried from the queue to each review page and on to the next item."""

    state: str = "todo"
    verdict: str = ""
    sort: str = services.PRIORITY
    provenance: str = ""

    @classmethod
    def of(cls, request: HttpRequest) -> QueueFilters:
        def read(key: str) -> str:
            return str(request.GET.get(key) or request.POST.get(key) or "")

        state, verdict, sort, provenance = (
            read(k) for k in ("state", "verdict", "sort", "provenance")
        )
        return cls(
            state=state if state in services.QUEUE_STATES else "todo",
            verdict=verdict if verdict in Verdict.values else "",
            sort=sort if sort in services.SORTS else services.PRIORITY,
            provenance=provenance if provenance in dict(PROVENANCE_FILTERS) else "",
        )

    def query(self) -> str:
        """The filters as a query string (``state`` always, the others when set)."""
        pairs = {"state": self.state, "verdict": self.verdict, "provenance": self.provenance}
        pairs["sort"] = "" if self.sort == services.PRIORITY else self.sort
        return urlencode({k: v for k, v in pairs.items() if v or k == "state"})

    def items(self) -> QuerySet[Submission]:
        queue = services.review_queue(state=self.state, verdict=self.verdict, sort=self.sort)
        return filter_provenance(queue, self.provenance)


@moderator_required
def queue(request: HttpRequest) -> HttpResponse:
    """Submissions to review, sortable and filterable."""
    filters = QueueFilters.of(request)
    page = Paginator(filters.items(), PAGE_SIZE).get_page(request.GET.get("page"))
    thumbs = thumbnails(list(page))
    context = {
        "page": page,
        "query": filters.query() + "&",
        "filters": filters,
        "rows": [(s, thumbs.get(s.pk)) for s in page],
        "state": filters.state,
        "verdict": filters.verdict,
        "sort": filters.sort,
        "provenance": filters.provenance,
        "provenance_filters": PROVENANCE_FILTERS,
        "states": services.QUEUE_STATES,
        "verdicts": Verdict.choices,
        "statuses": Status.choices,
        "labels": Label.choices,
    }
    return render(request, "moderation/queue.html", context)


# Keys of the decision form's shortcuts (review.js reads them from the page).
SHORTCUTS = {
    Action.CONFIRM: "c",
    Action.OVERRIDE_REAL: "r",
    Action.OVERRIDE_FAKE: "f",
    Action.ESCALATE: "e",
}
NEEDS_NOTE = (*services.OVERRIDES, Action.ESCALATE)


@moderator_required
def review(request: HttpRequest, pk: str) -> HttpResponse:
    """The result page of one submission with the decision form beside the
    viewer, its reports and its audit log."""
    sub = get_visible(request.user, pk)
    filters = QueueFilters.of(request)
    following = services.next_in_queue(sub, filters.items())
    reports = list(sub.reports.select_related("reporter", "resolved_by__moderator"))
    own = services.decides_own(sub, signed_in(request.user))
    # Confirming reverses a moderator's override: it takes a note too.
    confirm_note = services.confirm_needs_note(sub)
    context = {
        **result_context(request, sub),
        "review": True,
        "filters": filters,
        "queue_query": filters.query(),
        "next_sub": following,
        "decisions": sub.decisions.select_related("moderator"),
        "reruns": sub.reruns.select_related("moderator"),
        "reports": reports,
        "reports_seen": max((r.pk for r in reports), default=0),
        # What the decision is about: checked again when it is recorded.
        "decisions_seen": max((d.pk for d in sub.decisions.all()), default=0),
        "analysis_seen": sub.finished.isoformat() if sub.finished else "",
        "actions": [
            (
                value,
                label,
                SHORTCUTS[Action(value)],
                value in NEEDS_NOTE or (value == Action.CONFIRM and confirm_note),
            )
            for value, label in Action.choices
            if not own or value == Action.ESCALATE
        ],
        "own_submission": services.OWN_SUBMISSION if own else "",
    }
    return render(request, "moderation/review.html", context)


def _decisions_seen(request: HttpRequest) -> int | None:
    """The newest decision id the review page showed (0: none); None for a
    form without the field (nothing to check it against)."""
    value = request.POST.get("decisions_seen")
    if value is None:
        return None
    value = str(value)
    return int(value) if value.isascii() and value.isdecimal() and len(value) <= 18 else 0


def _reports_seen(request: HttpRequest) -> int:
    """The newest report id the review page showed (0: none, or a form
    without the field: resolving nothing unseen is the safe side)."""
    value = str(request.POST.get("reports_seen", ""))
    return int(value) if value.isascii() and value.isdecimal() and len(value) <= 18 else 0


GONE = "That submission does not exist (deleted, or never there); nothing was recorded."


def _gone(request: HttpRequest, filters: QueueFilters | None = None) -> HttpResponse:
    """Back to the queue, saying why, for an action on a submission deleted
    while its page was open (its own page would be a 404)."""
    messages.error(request, GONE)
    query = filters.query() if filters is not None else ""
    return redirect(f"{reverse('moderation:queue')}?{query}" if query else "moderation:queue")


@moderator_required
@require_POST
def decide(request: HttpRequest, pk: str) -> HttpResponse:
    """Record a decision (a note is required for overrides), then open the
    next queue item (the queue when there is none)."""
    filters = QueueFilters.of(request)
    try:
        sub = get_visible(request.user, pk)
    except Http404:
        return _gone(request, filters)
    following = services.next_in_queue(sub, filters.items())
    try:
        services.decide(
            sub,
            signed_in(request.user),
            str(request.POST.get("action", "")),
            request.POST.get("note", ""),
            reports_seen=_reports_seen(request),
            decisions_seen=_decisions_seen(request),
            analysis_seen=(
                None
                if request.POST.get("analysis_seen") is None
                else str(request.POST.get("analysis_seen"))
            ),
        )
    except services.DecisionError as e:
        if not Submission.objects.filter(pk=sub.pk).exists():  # deleted meanwhile
            return _gone(request, filters)
        messages.error(request, str(e))
        return redirect(f"{reverse('moderation:review', args=[sub.pk])}?{filters.query()}")
    messages.success(request, f"Decision recorded on {sub.display_title}.")
    if following is None:
        return redirect(f"{reverse('moderation:queue')}?{filters.query()}")
    return redirect(f"{reverse('moderation:review', args=[following.pk])}?{filters.query()}")


@moderator_required
@require_POST
def rerun(request: HttpRequest, pk: str) -> HttpResponse:
    """Analyse again with the current models."""
    try:
        sub = get_visible(request.user, pk)
    except Http404:
        return _gone(request)
    moderator = signed_in(request.user)
    try:
        analyses_services.rerun(sub, lambda old: services.record_rerun(old, moderator))
    except (analyses_services.UploadRejected, analyses_services.RerunRefused) as e:
        if not Submission.objects.filter(pk=sub.pk).exists():  # deleted meanwhile
            return _gone(request)
        messages.error(request, str(e))
    except analyses_services.QueueUnavailable as e:
        messages.warning(request, str(e))
    else:
        messages.success(request, "Queued again with the current models.")
    return redirect("analyses:detail", pk=sub.pk)


@moderator_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """Verdicts against decisions: accuracy, precision, recall, F1, confusion matrix."""
    m = services.metrics()
    return render(request, "moderation/dashboard.html", {"m": m, "labels": m.LABELS})
