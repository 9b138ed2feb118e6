"""REST API (token auth): submit, poll, result, frames, artifacts, CSV.

Same rules as the site: owners see theirs, moderators everyone's; anything
else is 404.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db.models import QuerySet
from django.http import FileResponse, Http404, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import (
    APIException,
    ErrorDetail,
    NotFound,
    PermissionDenied,
    ValidationError,
)
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser, FormParser, JSONParser, MultiPartParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from accounts.roles import is_moderator, signed_in
from analyses import services
from analyses.access import get_visible, visible_submissions
from analyses.config import trusttrace_settings
from analyses.limits import too_large_message, upload_over_limit
from analyses.models import Submission
from analyses.views import declared_too_large, progress_payload, serve_private
from api.serializers import (
    ArtifactSerializer,
    DisputeOutSerializer,
    DisputeSerializer,
    ResultSerializer,
    SubmissionSerializer,
    SubmitSerializer,
    dispute_payload,
    provenance_payload,
)
from moderation.services import with_decisions
from reports.csvexport import SUBMISSION_COLUMNS, frame_header, frame_rows, stream_csv
from reports.csvexport import submission_rows as csv_rows
from reports.views import FilterError, filtered_submissions, frame_members

NO_FILE_ARRIVED_API = (
    "No file arrived. Send the media as the multipart field 'file'; a part whose file "
    "name is not valid UTF-8 is dropped by the server, so rename such a file and try again."
)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every error as ``{"detail", "code"}``: a :class:`services.Refusal`
    (a queued-later upload adds its ``id``) with the status of
    :data:`services.HTTP_STATUS`, the table the upload page uses too; DRF's
    own errors (401, 403, 404, 405, 429, parse errors) with their code; a
    validation error's messages joined into ``detail`` (``"file: No file was
    submitted."``), the first one's code, and the per-field messages kept
    under ``errors``."""
    if isinstance(exc, services.Refusal):
        return Response(exc.payload(), status=services.http_status(exc))
    # Django's own refusals of a request's size or shape, raised when the view reads it.
    if isinstance(exc, RequestDataTooBig):
        return Response(
            {
                "detail": "The request's fields other than files are over the "
                f"{settings.DATA_UPLOAD_MAX_MEMORY_SIZE / 2**20:.1f} MiB they may take.",
                "code": "too_large",
            },
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, (TooManyFieldsSent, TooManyFilesSent)):
        what, limit = (
            ("fields (query or form parameters)", settings.DATA_UPLOAD_MAX_NUMBER_FIELDS)
            if isinstance(exc, TooManyFieldsSent)
            else ("files", settings.DATA_UPLOAD_MAX_NUMBER_FILES)
        )
        return Response(
            {"detail": f"The request has more than {limit} {what}.", "code": "parse_error"},
            status=status.HTTP_400_BAD_REQUEST,
        )
    # As DRF's handler does, so that their codes are known here.
    if isinstance(exc, Http404):
        exc = NotFound(*exc.args)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = PermissionDenied(*exc.args)
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, APIException):
        return response
    if isinstance(exc, ValidationError):
        messages = _field_messages(exc.detail)
        codes = _field_messages(exc.get_codes())
        response.data = {
            "detail": " ".join(f"{field}: {text}" if field else text for field, text in messages),
            "code": codes[0][1] if codes else "invalid",
            "errors": exc.detail,
        }
    elif isinstance(response.data, dict) and "detail" in response.data:
        code = exc.get_codes()
        response.data = {**response.data, "code": code if isinstance(code, str) else "error"}
    return response


def _field_messages(detail: Any, field: str = "") -> list[tuple[str, str]]:
    """``(field, message)`` pairs of a validation error's nested detail, in order."""
    if isinstance(detail, dict):
        pairs: list[tuple[str, str]] = []
        for key, value in detail.items():
            name = "" if key == "non_field_errors" else str(key)
            pairs += _field_messages(value, f"{field}.{name}" if field and name else name or field)
        return pairs
    if isinstance(detail, list):
        return [pair for item in detail for pair in _field_messages(item, field)]
    return [(field, str(detail))]


class FileDownloads(BaseContentNegotiation):
    """For the CSV and image downloads: those answers are files, not rendered
    data, so a client's ``Accept: text/csv`` or ``image/png`` must not be
    refused with DRF's 406; errors still come back as JSON."""

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser | None:
        return next(iter(parsers), None)

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        first = next(iter(renderers))
        return first, str(first.media_type)


class SubmissionViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet[Submission],
):
    """Submissions visible to the caller."""

    serializer_class = SubmissionSerializer
    parser_classes = (MultiPartParser, FormParser)

    def get_serializer_context(self) -> dict[str, Any]:
        context = super().get_serializer_context()
        context["viewer_is_moderator"] = is_moderator(self.request.user)
        return context

    def get_queryset(self) -> QuerySet[Submission]:
        # -pk breaks ties, so a page boundary never repeats or skips a row.
        return visible_submissions(self.request.user).order_by("-created", "-pk")

    @extend_schema(
        parameters=[
            OpenApiParameter("from", OpenApiTypes.DATE, description="created on or after"),
            OpenApiParameter("to", OpenApiTypes.DATE, description="created on or before"),
            OpenApiParameter("verdict", str, description="fake, real, uncertain or no_face"),
            OpenApiParameter("status", str, description="pending, running, done, ..."),
            OpenApiParameter("decision", str, description="a moderator's label, or none"),
        ],
        responses={200: SubmissionSerializer(many=True), 400: OpenApiTypes.OBJECT},
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Submissions visible to the caller, newest first, filtered as the CSV
        export is (``from``, ``to``, ``verdict``, ``status``, ``decision``); a
        value that does not parse is a 400 ``bad_filter``, never everything."""
        try:
            qs = filtered_submissions(request.user, request.query_params)
        except FilterError as e:
            return Response(
                {"detail": str(e), "code": "bad_filter"}, status=status.HTTP_400_BAD_REQUEST
            )
        # Each row's decision and the caller's role are read once for the page,
        # not once a row.
        page = self.paginate_queryset(with_decisions(qs.order_by("-created", "-pk")))
        assert page is not None  # the site's settings always paginate
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    def get_object(self) -> Submission:
        return get_visible(self.request.user, self.kwargs["pk"])

    @extend_schema(
        request=SubmitSerializer,
        responses={
            201: SubmissionSerializer,
            200: OpenApiResponse(SubmissionSerializer, "reuse=true: the earlier result"),
            400: OpenApiResponse(OpenApiTypes.OBJECT, "refused: {detail, code}"),
            413: OpenApiResponse(OpenApiTypes.OBJECT, "over the upload limit: {detail, code}"),
            429: OpenApiResponse(OpenApiTypes.OBJECT, "a per-user limit: {detail, code}"),
            503: OpenApiResponse(OpenApiTypes.OBJECT, "no models or no queue: {detail, code}"),
        },
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Upload media; it is checked at the edge, saved, then queued."""
        if declared_too_large(request._request):
            limit = trusttrace_settings().max_upload_bytes
            return Response(
                {
                    "detail": f"The request is larger than the {limit} byte upload limit.",
                    "code": "too_large",
                },
                status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            )
        form = SubmitSerializer(data=request.data)
        if upload_over_limit(request._request):
            # LimitedUploadHandler stopped reading a file: the partial file is gone.
            return Response(
                {"detail": too_large_message(request._request), "code": "too_large"},
                status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            )
        if "file" not in request.FILES and "file" not in request.data:
            # Django drops a part whose headers are not UTF-8 (a non-UTF-8
            # file name): say that it may have been sent and how, rather than
            # only "No file was submitted." (the upload page does the same).
            raise ValidationError({"file": [ErrorDetail(NO_FILE_ARRIVED_API, code="required")]})
        form.is_valid(raise_exception=True)
        # A refusal (services.Refusal) becomes its answer in exception_handler.
        sub, reused = services.submit(
            signed_in(request.user),
            form.validated_data["file"],
            title=form.validated_data.get("title", ""),
            reference=form.validated_data.get("reference"),
            reuse=bool(form.validated_data.get("reuse")),
        )
        return Response(
            SubmissionSerializer(sub, context={"request": request}).data,
            status=status.HTTP_200_OK if reused else status.HTTP_201_CREATED,
        )

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Owners delete their submission and its files."""
        sub = self.get_object()
        if sub.owner_id != request.user.pk:
            raise Http404("No such submission.")
        services.delete_submission(sub)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        methods=["GET"],
        responses={
            200: inline_serializer("Disputes", {"disputes": DisputeOutSerializer(many=True)})
        },
    )
    @extend_schema(
        methods=["POST"],
        request=DisputeSerializer,
        responses={
            201: OpenApiResponse(DisputeOutSerializer, "a new dispute"),
            200: OpenApiResponse(DisputeOutSerializer, "the same reason is open already"),
            400: OpenApiResponse(OpenApiTypes.OBJECT, "refused: {detail, code}"),
        },
    )
    @action(
        detail=True,
        methods=["get", "post"],
        parser_classes=(JSONParser, FormParser, MultiPartParser),
    )
    def disputes(self, request: Request, pk: str | None = None) -> Response:
        """The owner's requests for review of the verdict (GET, newest first,
        each open or answered), or a new one (POST ``reason``): the same rules
        as the result page's "Ask for review"."""
        from moderation.services import dispute, disputes_of

        sub = self.get_object()
        user = signed_in(request.user)
        if sub.owner_id != user.pk:
            # Only the owner disputes a verdict; a moderator decides instead.
            raise NotFound("No such submission among yours.")
        if request.method == "POST":
            form = DisputeSerializer(data=request.data)
            form.is_valid(raise_exception=True)
            report, new = dispute(sub, user, form.validated_data.get("reason", ""))
            return Response(
                dispute_payload(report),
                status=status.HTTP_201_CREATED if new else status.HTTP_200_OK,
            )
        return Response({"disputes": [dispute_payload(r) for r in disputes_of(sub, user)]})

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["get"])
    def progress(self, request: Request, pk: str | None = None) -> Response:
        """Status, stage and percent (poll this)."""
        return Response(progress_payload(self.get_object()))

    @extend_schema(responses={200: ResultSerializer})
    @action(detail=True, methods=["get"])
    def result(self, request: Request, pk: str | None = None) -> Response:
        """The full analysis result (the CLI's JSON form), chart series and the
        file's Content Credentials."""
        sub = self.get_object()
        return Response(
            {
                "status": sub.status,
                # Rows stored before results were given the upload's name
                # still hold the server's path: never shown.
                "result": {**sub.result, "file": sub.original_name} if sub.result else {},
                "series": sub.series,
                "provenance": provenance_payload(sub),
            }
        )

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["get"])
    def frames(self, request: Request, pk: str | None = None) -> Response:
        """Per-frame, per-person scores."""
        return Response({"frames": self.get_object().frame_rows})

    @extend_schema(responses={200: ArtifactSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def artifacts(self, request: Request, pk: str | None = None) -> Response:
        """The explanation images of a submission."""
        sub = self.get_object()
        return Response(ArtifactSerializer(sub.artifacts.all(), many=True).data)

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["get"])
    def index(self, request: Request, pk: str | None = None) -> Response:
        """The explanation index (the explainer's index.json, as the result page
        reads it): every artifact with its ``id`` and ``url``, and the chart series."""
        sub = self.get_object()
        artifacts = ArtifactSerializer(sub.artifacts.all(), many=True).data
        missing = (sub.result or {}).get("explanations_missing") or {}
        return Response({"artifacts": artifacts, "series": sub.series, "missing": missing})

    @extend_schema(responses={(200, "text/csv"): OpenApiTypes.STR})
    @action(
        detail=True,
        methods=["get"],
        url_path="frames-csv",
        content_negotiation_class=FileDownloads,
    )
    def frames_csv(self, request: Request, pk: str | None = None) -> StreamingHttpResponse:
        """Frame-level CSV (frame, time, person, each member, score)."""
        sub = self.get_object()
        members = frame_members(sub)
        return stream_csv(f"frames-{sub.pk}.csv", frame_header(members), frame_rows(sub, members))

    @extend_schema(responses={(200, "text/csv"): OpenApiTypes.STR, 400: OpenApiTypes.OBJECT})
    @action(
        detail=False,
        methods=["get"],
        url_path="export-csv",
        content_negotiation_class=FileDownloads,
    )
    def export_csv(self, request: Request) -> Response | StreamingHttpResponse:
        """Submissions as CSV (own, or all for moderators), filtered by
        from/to/verdict/status/decision; a value that does not parse is a 400."""
        try:
            qs = filtered_submissions(request.user, request.query_params)
        except FilterError as e:
            return Response(
                {"detail": str(e), "code": "bad_filter"}, status=status.HTTP_400_BAD_REQUEST
            )
        return stream_csv("submissions.csv", SUBMISSION_COLUMNS, csv_rows(qs))

    @extend_schema(responses={(200, "image/png"): OpenApiTypes.BINARY})
    @action(
        detail=True,
        methods=["get"],
        url_path=r"artifacts/(?P<artifact_id>\d+)/file",
        url_name="artifact-file",
        content_negotiation_class=FileDownloads,
    )
    def artifact_file(
        self, request: Request, pk: str | None = None, artifact_id: str | None = None
    ) -> FileResponse:
        """One explanation image."""
        sub = self.get_object()
        artifact = get_object_or_404(sub.artifacts, pk=artifact_id)
        path = Path(artifact.file.path)
        return serve_private(
            path,
            f"{artifact.kind}-{artifact.pk}{path.suffix}",
            artifact.media_type,
            request._request,
        )
