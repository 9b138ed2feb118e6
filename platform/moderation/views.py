"""Moderator pages: queue, review, decide, re-run, dashboard."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from accounts.roles import is_moderator
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from analyses import services as analyses_services
from analyses.access import get_visible
from analyses.models import ArtifactKind, Status, Verdict
from analyses.views import person_rows
from moderation import services
from moderation.models import Action, Label

View = Callable[..., HttpResponse]
PAGE_SIZE = 50


def moderator_required(view: View) -> View:
    """Signed-in moderators and admins only; everyone else gets a 404."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not is_moderator(request.user):
            raise Http404("No such page.")
        return view(request, *args, **kwargs)

    return wrapper


@moderator_required
def queue(request: HttpRequest) -> HttpResponse:
    """Submissions to review, sortable and filterable."""
    state = request.GET.get("state", "todo")
    state = state if state in services.QUEUE_STATES else "todo"
    verdict = request.GET.get("verdict", "")
    verdict = verdict if verdict in Verdict.values else ""
    sort = request.GET.get("sort", "-date")
    qs = services.review_queue(state=state, verdict=verdict, sort=sort)
    page = Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "state": state,
        "verdict": verdict,
        "sort": sort,
        "states": services.QUEUE_STATES,
        "verdicts": Verdict.choices,
        "statuses": Status.choices,
        "labels": Label.choices,
    }
    return render(request, "moderation/queue.html", context)


@moderator_required
def review(request: HttpRequest, pk: str) -> HttpResponse:
    """One submission with its heatmaps, history and the decision form."""
    sub = get_visible(request.user, pk)
    artifacts = list(sub.artifacts.all())
    context = {
        "sub": sub,
        "artifacts": artifacts,
        "artifact_kinds": [(k, ArtifactKind(k).label) for k in sorted({a.kind for a in artifacts})],
        "artifact_members": sorted({a.member for a in artifacts if a.member}),
        "decisions": sub.decisions.select_related("moderator"),
        "reports": sub.reports.select_related("reporter"),
        "actions": Action.choices,
        "member_names": sorted(sub.members),
        "person_rows": person_rows(sub),
        "series_id": f"series-{sub.pk}",
    }
    return render(request, "moderation/review.html", context)


@moderator_required
@require_POST
def decide(request: HttpRequest, pk: str) -> HttpResponse:
    """Record a decision (a note is required for overrides)."""
    sub = get_visible(request.user, pk)
    try:
        services.decide(
            sub, request.user, str(request.POST.get("action", "")), request.POST.get("note", "")
        )
    except services.DecisionError as e:
        messages.error(request, str(e))
        return redirect("moderation:review", pk=sub.pk)
    messages.success(request, "Decision recorded.")
    return redirect("moderation:queue")


@moderator_required
@require_POST
def rerun(request: HttpRequest, pk: str) -> HttpResponse:
    """Analyse again with the current models."""
    sub = get_visible(request.user, pk)
    try:
        analyses_services.rerun(sub)
    except (analyses_services.UploadRejected, analyses_services.RerunRefused) as e:
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
