"""Submission pages: list, upload, progress, result, files, delete, report."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from accounts.roles import signed_in
from analyses import services
from analyses.access import get_owned, get_visible
from analyses.config import trusttrace_settings
from analyses.forms import SubmissionForm
from analyses.limits import upload_over_limit
from analyses.models import Artifact, ArtifactKind, Submission
from analyses.ranges import open_range
from analyses.viewer import (
    HEAT_NOTE,
    badge,
    band_percent,
    build_viewer,
    score_bars,
    verdict_sentence,
)


def models_page(request: HttpRequest) -> HttpResponse:
    """Which members and weight versions this site runs (public). What is
    wrong with them, with the server's paths and commands, is for staff."""
    members = services.models_status()
    ready = all(m.installed for m in members)
    runtime = services.runtime_status()
    staff = bool(request.user.is_authenticated and request.user.is_staff)
    return render(
        request,
        "analyses/models.html",
        {"members": members, "ready": ready, "runtime": runtime, "staff": staff},
    )


# Rows per page of "My submissions".
LIST_PAGE_SIZE = 50


@login_required
def submission_list(request: HttpRequest) -> HttpResponse:
    """The signed-in user's own submissions."""
    subs = Submission.objects.filter(owner_id=request.user.pk).order_by("-created", "-pk")
    page = Paginator(subs, LIST_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "analyses/list.html", {"submissions": page, "page": page, "query": ""})


def _limit_text() -> str:
    return f"{trusttrace_settings().max_upload_bytes / 2**20:.0f} MiB"


NO_FILE_ARRIVED = (
    "Upload refused: no readable file arrived. The file name may not be valid UTF-8 "
    "text, or the upload was interrupted; rename the file and try again."
)
# Room for the form fields and multipart framing beside the file itself.
MULTIPART_SLACK_BYTES = 2**20


def declared_too_large(request: HttpRequest) -> bool:
    """Whether the request declares a body larger than any acceptable upload
    (checked before Django reads the body)."""
    try:
        declared = int(str(request.META.get("CONTENT_LENGTH") or 0))
    except ValueError:
        return False
    limit = trusttrace_settings().max_upload_bytes
    # A reference may accompany the file: two files at most.
    return declared > 2 * limit + MULTIPART_SLACK_BYTES


@login_required
def submit(request: HttpRequest) -> HttpResponse:
    """Upload form. Refused clearly when no weights are installed."""
    members = services.models_status()
    staff = bool(request.user.is_authenticated and request.user.is_staff)
    problems = [(m.problem if staff else m.brief) or "" for m in members if m.problem]
    status, error = 200, ""
    form = SubmissionForm()
    if request.method == "POST" and declared_too_large(request):
        # Refused before the body is read: nothing reaches the disk.
        error = f"Upload refused: the request is larger than the {_limit_text()} upload limit."
        status = 413
    elif request.method == "POST":
        form = SubmissionForm(request.POST, request.FILES)
        if problems:
            error = "This site cannot analyse media yet: " + " ".join(problems)
            status = 503
        elif upload_over_limit(request):
            # LimitedUploadHandler stopped reading a file: the partial file is gone.
            error = f"Upload refused: a file is larger than the {_limit_text()} upload limit."
            status = 413
        elif form.is_valid():
            try:
                sub, reused = services.submit(
                    signed_in(request.user),
                    form.cleaned_data["file"],
                    title=form.cleaned_data["title"],
                    reference=form.cleaned_data.get("reference"),
                    reuse=bool(form.cleaned_data.get("reuse")),
                )
            except services.Refusal as e:
                status = services.http_status(e)
                # A refusal of this upload reads "Upload refused: ..."; a site
                # that cannot take one now (503) says why in its own words. The
                # queue being down keeps the file, pending: the reaper queues it.
                error = f"Upload refused: {e}" if status < 500 else str(e)
            else:
                if reused:
                    messages.info(request, "You analysed this file before: here is that result.")
                else:
                    messages.success(request, "Uploaded. The analysis is queued.")
                return redirect("analyses:detail", pk=sub.pk)
        else:
            status = 400
            if not request.FILES:
                # Django drops a part whose headers are not UTF-8 (a non-UTF-8
                # file name): say so rather than "this field is required".
                error = NO_FILE_ARRIVED
    context = {
        "form": form,
        "error": error,
        "members": members,
        "problems": problems,
        "limit": _limit_text(),
    }
    return render(request, "analyses/submit.html", context, status=status)


def progress_payload(sub: Submission) -> dict[str, Any]:
    """The JSON the progress bar polls (also the API's status)."""
    return {
        "id": str(sub.pk),
        "status": sub.status,
        "stage": sub.stage,
        "percent": sub.percent,
        "finished": sub.is_finished,
        "verdict": sub.verdict or None,
        "score": sub.score,
        "reason": sub.reason or None,
    }


@login_required
@require_GET
def progress(request: HttpRequest, pk: str) -> JsonResponse:
    """Status, stage and percent of one submission."""
    return JsonResponse(progress_payload(get_visible(request.user, pk)))


# ``?person=N`` longer than this is not a person of any analysis.
PERSON_DIGITS = 6


def result_context(request: HttpRequest, sub: Submission) -> dict[str, Any]:
    """The context of the result body (``analyses/_result.html``), shared by the
    result and review pages."""
    from django.urls import reverse

    stored = list(sub.artifacts.all())

    def url(a: Artifact) -> str:
        return reverse("analyses:artifact", args=[sub.pk, a.pk])

    shown = build_viewer(sub.series, [a for a in stored if a.media_type in INLINE_TYPES], url)
    person = request.GET.get("person", "")
    # isdigit() also accepts "²" and int() refuses numbers over 4,300 digits:
    # only a short run of ASCII digits is a person number.
    if person.isascii() and person.isdecimal() and len(person) <= PERSON_DIGITS:
        shown.select_person(int(person))
    current = shown.current
    first = next((t for t in shown.tabs if current is not None and t.key in current.layers), None)
    everything = request.GET.get("frames") == "all"
    low, width, threshold = band_percent(sub)
    return {
        "sub": sub,
        "badge": badge(sub),
        "sentence": verdict_sentence(sub),
        "bars": score_bars(sub),
        "band_low": low,
        "band_width": width,
        "threshold_at": threshold,
        "viewer": shown,
        "current": current,
        "current_tab": first,
        "current_layer": current.layers[first.key] if current and first else None,
        "filmstrip": shown.filmstrip(current.person if current else None, everything),
        "all_frames": everything,
        "frame_count": shown.count(current.person if current else None),
        # The most frames any one person has: the filmstrip is there when it is over one.
        "strip_frames": max((shown.count(p) for p in shown.persons), default=0),
        "heat_note": HEAT_NOTE,
        "viewer_data": shown.as_json(),
        # Types the browser may not show inline (SVG can carry scripts) are links.
        # and the charts (the page draws the chart from the series; its PNG
        # belongs to no frame, so the viewer never shows it).
        "artifact_downloads": [
            a for a in stored if a.media_type not in INLINE_TYPES or a.kind == ArtifactKind.CHART
        ],
        "member_names": sorted(sub.members),
        "person_rows": person_rows(sub),
        "series_id": f"series-{sub.pk}",
    }


@login_required
def detail(request: HttpRequest, pk: str) -> HttpResponse:
    """The result page (or the progress bar while running)."""
    from moderation.services import (
        MAX_OPEN_REPORTS,
        decision_for,
        disputes_of,
        open_reports_of,
    )

    sub = get_visible(request.user, pk)
    is_owner = sub.owner_id == request.user.pk
    context = {
        **result_context(request, sub),
        "decision": decision_for(sub, request.user),
        "is_owner": is_owner,
        # The owner's requests for review, and which decision answered each.
        "disputes": disputes_of(sub, signed_in(request.user)) if is_owner else [],
        # At the cap the form would only take a reason to refuse it.
        "disputes_full": is_owner
        and open_reports_of(sub, signed_in(request.user)) >= MAX_OPEN_REPORTS,
    }
    return render(request, "analyses/detail.html", context)


def person_rows(sub: Submission) -> list[tuple[dict[str, Any], list[float | None]]]:
    """Each person with member scores in the order of ``sorted(sub.members)``."""
    names = sorted(sub.members)
    return [(p, [p.get("members", {}).get(n) for n in names]) for p in sub.persons]


# Types a browser may render inline; anything else (SVG and HTML included: they
# can carry scripts) is served as opaque bytes.
INLINE_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/webp",
        "image/bmp",
        "image/gif",
        "video/mp4",
        "video/quicktime",
        "video/webm",
        "video/x-matroska",
        "video/x-msvideo",
    }
)


def serve_private(
    path: Path,
    download_name: str,
    content_type: str | None = None,
    request: HttpRequest | None = None,
) -> FileResponse:
    """Stream a stored file to an already authorised user: never cached, never
    sniffed; one byte range when ``request`` asks for it (206)."""
    if not path.is_file():
        raise Http404("The file is gone.")
    content_type = content_type or mimetypes.guess_type(path.name)[0]
    if content_type not in INLINE_TYPES:
        content_type = "application/octet-stream"
    body, status, range_headers = open_range(request, path)
    response = FileResponse(body, content_type=content_type, status=status)
    for name, value in range_headers.items():
        response[name] = value
    response["Content-Disposition"] = f'inline; filename="{download_name}"'
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, no-store"
    return response


@login_required
@require_GET
def submission_file(request: HttpRequest, pk: str, which: str = "file") -> FileResponse:
    """The uploaded media (or its reference), to owners and moderators only."""
    sub = get_visible(request.user, pk)
    field = sub.reference_file if which == "reference" else sub.file
    if not field:
        raise Http404("No such file.")
    return serve_private(
        Path(field.path), f"{sub.pk}{Path(field.name or '').suffix}", request=request
    )


@login_required
@require_GET
def artifact_file(request: HttpRequest, pk: str, artifact_id: int) -> FileResponse:
    """One explanation image, to owners and moderators only."""
    sub = get_visible(request.user, pk)
    artifact: Artifact = get_object_or_404(sub.artifacts, pk=artifact_id)
    path = Path(artifact.file.path)
    return serve_private(
        path, f"{artifact.kind}-{artifact.pk}{path.suffix}", artifact.media_type, request
    )


@login_required
@require_POST
def delete(request: HttpRequest, pk: str) -> HttpResponse:
    """Owners delete their submission and its files."""
    sub = get_owned(request.user, pk)
    services.delete_submission(sub)
    messages.success(request, "The submission and its files were deleted.")
    return redirect("analyses:list")


@login_required
@require_POST
def report(request: HttpRequest, pk: str) -> HttpResponse:
    """The owner disputes a verdict: the submission joins the moderation queue."""
    from moderation.services import DecisionError, dispute

    sub = get_owned(request.user, pk)
    try:
        _, new = dispute(sub, signed_in(request.user), str(request.POST.get("reason", "")))
    except DecisionError as e:
        messages.error(request, str(e))
        return redirect("analyses:detail", pk=sub.pk)
    messages.success(
        request,
        "Thank you; a moderator will review this submission."
        if new
        else "That request for review is already waiting for a moderator.",
    )
    return redirect("analyses:detail", pk=sub.pk)
