"""API representations of submissions and artifacts."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from rest_framework import serializers

from analyses.models import Artifact, Submission


class SubmissionSerializer(serializers.ModelSerializer[Submission]):
    """A submission's status, progress and headline result."""

    decision = serializers.SerializerMethodField()

    class Meta:
        model = Submission
        fields = (
            "id", "title", "original_name", "kind", "media_format", "sha256", "size_bytes",
            "status", "stage", "percent", "reason", "reason_code", "verdict", "score",
            "threshold", "uncertain_band", "members", "model_versions", "timings",
            "created", "started", "finished", "decision",
        )  # fmt: skip
        read_only_fields = fields

    def get_decision(self, obj: Submission) -> dict[str, Any] | None:
        from moderation.services import decision_for

        request = self.context.get("request")
        d = decision_for(obj, getattr(request, "user", None))
        if d is None:
            return None
        return {"action": d.action, "label": d.to_label, "note": d.note, "at": d.created}


class SubmitSerializer(serializers.Serializer[Any]):
    """Multipart upload: ``file`` (required), ``reference``, ``title``, ``reuse``."""

    file = serializers.FileField()
    reference = serializers.FileField(required=False)
    title = serializers.CharField(required=False, allow_blank=True, max_length=200)
    reuse = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Return your earlier finished analysis of the same file (200) instead of "
        "analysing it again (201).",
    )


class ArtifactSerializer(serializers.ModelSerializer[Artifact]):
    """One explanation image and the API URL serving it."""

    url = serializers.SerializerMethodField()

    class Meta:
        model = Artifact
        fields = (
            "id", "kind", "frame", "time", "person", "member", "caption", "width", "height",
            "media_type", "url",
        )  # fmt: skip
        read_only_fields = fields

    def get_url(self, obj: Artifact) -> str:
        return reverse("api:submission-artifact-file", args=[obj.submission_id, obj.pk])
