"""API representations of submissions and artifacts."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field, inline_serializer
from rest_framework import serializers

from analyses.models import PROVENANCE_STATES, Artifact, Submission


class ProvenanceActionSerializer(serializers.Serializer[Any]):
    """One action of the active C2PA manifest."""

    action = serializers.CharField(help_text="e.g. c2pa.created, c2pa.edited, c2pa.opened")
    source_type = serializers.CharField(
        help_text="IPTC digital source type code (trainedAlgorithmicMedia, digitalCapture, ...) "
        "or the raw value; empty when the action has none"
    )
    software = serializers.CharField(help_text="the software agent named by the action")
    when = serializers.CharField(help_text="the action's own time, when given")
    ai = serializers.BooleanField(
        help_text="the source type says a trained model made (part of) the media"
    )


class ProvenanceSerializer(serializers.Serializer[Any]):
    """The file's C2PA Content Credentials as read and verified at upload."""

    version = serializers.IntegerField()
    state = serializers.ChoiceField(
        choices=PROVENANCE_STATES,
        help_text="valid: signature, certificate chain (trusted) and binding to the file check "
        "out; untrusted: signature and binding check out, the signer is not on the trust list; "
        "invalid: the manifest does not verify or cannot be read (see reason); absent: none "
        "(not evidence of anything); unchecked: could not be checked (see reason)",
    )
    reason = serializers.CharField()
    codes = serializers.ListField(
        child=serializers.CharField(), help_text="the active manifest's validation failure codes"
    )
    signer = serializers.CharField(help_text="signing certificate subject: CN (O)")
    issuer = serializers.CharField(help_text="signing certificate issuer: CN (O)")
    claim_generator = serializers.CharField(help_text="the tool that made the claim")
    title = serializers.CharField()
    signed_at = serializers.CharField(help_text="trusted timestamp of the signature, if any")
    created_at = serializers.CharField(help_text="time of the c2pa.created action, if given")
    ai_generated = serializers.BooleanField(
        help_text="a manifest in the store declares a trained generative model made or changed "
        "the media (IPTC trainedAlgorithmicMedia or compositeWithTrainedAlgorithmicMedia); "
        "worth what state says"
    )
    ai_generated_in = serializers.ChoiceField(
        choices=("", "active", "ingredient"),
        help_text="whose manifest declares it: this file's (active) or an ingredient's",
    )
    actions = ProvenanceActionSerializer(many=True, help_text="at most 20")
    actions_total = serializers.IntegerField()
    ingredients = serializers.ListField(
        child=serializers.CharField(), help_text="ingredient titles, at most 20"
    )
    ingredients_total = serializers.IntegerField()
    manifests = serializers.IntegerField(help_text="manifests in the store")
    remote_url = serializers.CharField(help_text="a remote manifest's URL (never fetched)")
    mime_type = serializers.CharField()
    library = serializers.CharField(help_text="the c2pa-python and c2pa-rs versions that read it")


class SubmissionSerializer(serializers.ModelSerializer[Submission]):
    """A submission's status, progress and headline result."""

    decision = serializers.SerializerMethodField()
    provenance = serializers.SerializerMethodField()

    class Meta:
        model = Submission
        fields = (
            "id",
            "title",
            "original_name",
            "kind",
            "media_format",
            "sha256",
            "size_bytes",
            "status",
            "stage",
            "percent",
            "reason",
            "reason_code",
            "verdict",
            "score",
            "threshold",
            "uncertain_band",
            "members",
            "model_versions",
            "timings",
            "created",
            "started",
            "finished",
            "decision",
            "provenance",
        )
        read_only_fields = fields

    @extend_schema_field(ProvenanceSerializer(allow_null=True))
    def get_provenance(self, obj: Submission) -> dict[str, Any] | None:
        """The Content Credentials summary; null when they were never read."""
        return provenance_payload(obj)

    def get_decision(self, obj: Submission) -> dict[str, Any] | None:
        from moderation.services import decision_for

        request = self.context.get("request")
        # A list view says once whether the caller moderates (one lookup a page).
        d = decision_for(
            obj, getattr(request, "user", None), moderator=self.context.get("viewer_is_moderator")
        )
        if d is None:
            return None
        return {
            "action": d.action,
            "label": d.to_label,
            "note": d.note,
            "at": d.created,
            # A re-run has replaced the analysis decided on; the label stands.
            "on_earlier_analysis": d.on_earlier_analysis,
        }


class ResultSerializer(serializers.Serializer[Any]):
    """``GET /api/submissions/<id>/result/``."""

    status = serializers.CharField()
    result = serializers.DictField(help_text="the analysis result, as analyze --json writes it")
    series = serializers.DictField(help_text="the per-frame chart series")
    provenance = ProvenanceSerializer(
        allow_null=True, help_text="the file's C2PA Content Credentials; null when never read"
    )


def provenance_payload(sub: Submission) -> dict[str, Any] | None:
    """``sub.provenance`` in :class:`ProvenanceSerializer` form (``None``:
    uploaded before Content Credentials were read)."""
    if not sub.provenance_state:
        return None
    stored = sub.provenance
    # A summary of an older version may lack fields: they get empty values.
    filled = {
        name: stored.get(name, _empty(f)) for name, f in ProvenanceSerializer().fields.items()
    }
    filled["actions"] = [
        {name: a.get(name, _empty(f)) for name, f in ProvenanceActionSerializer().fields.items()}
        for a in filled["actions"]
        if isinstance(a, dict)
    ]
    data: dict[str, Any] = ProvenanceSerializer(filled).data
    return data


def _empty(f: serializers.Field[Any, Any, Any, Any]) -> Any:
    if isinstance(f, serializers.ListField | serializers.ListSerializer):
        return []
    if isinstance(f, serializers.BooleanField):
        return False
    if isinstance(f, serializers.IntegerField):
        return 0
    return ""


class SubmitSerializer(serializers.Serializer[Any]):
    """Multipart upload: ``file`` (required), ``reference``, ``title``, ``reuse``."""

    # Empty files are the service's to refuse, as on the upload page: the same
    # reason and code, and counted against the hourly limit.
    file = serializers.FileField(allow_empty_file=True)
    reference = serializers.FileField(required=False, allow_empty_file=True)
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
    # null, as in index.json, for an artifact of no one member (a chart, a mask).
    member = serializers.SerializerMethodField()

    class Meta:
        model = Artifact
        fields = (
            "id",
            "kind",
            "frame",
            "time",
            "person",
            "member",
            "caption",
            "width",
            "height",
            "media_type",
            "url",
        )
        read_only_fields = fields

    def get_member(self, obj: Artifact) -> str | None:
        return obj.member or None

    def get_url(self, obj: Artifact) -> str:
        return reverse("api:submission-artifact-file", args=[obj.submission_id, obj.pk])


class DisputeSerializer(serializers.Serializer[Any]):
    """``POST /api/submissions/<id>/disputes/``: why the verdict is wrong."""

    reason = serializers.CharField(
        max_length=2000, required=False, allow_blank=True, trim_whitespace=True
    )


class DisputeOutSerializer(serializers.Serializer[Any]):
    """One of the owner's disputes, as :func:`dispute_payload` gives it."""

    id = serializers.IntegerField()
    reason = serializers.CharField()
    created = serializers.DateTimeField()
    status = serializers.ChoiceField(choices=["open", "answered"])
    # A field called ``label`` cannot be a class attribute (Field.label).
    answer = inline_serializer(
        "DisputeAnswer",
        {
            "action": serializers.CharField(help_text="the decision: confirm, override_real, ..."),
            "label": serializers.CharField(help_text="what the media is now: fake or real"),
            "at": serializers.DateTimeField(),
        },
        allow_null=True,
        help_text=(
            "the decision that answered it; null while open, and for a dispute answered "
            "before the site recorded which decision answered it (before 2 Dec 2026)"
        ),
    )


def dispute_payload(report: Any) -> dict[str, Any]:
    """One of the owner's disputes: open, or answered by a decision (its
    action, label and time; not who made it, as on the result page)."""
    answer = report.resolved_by
    return {
        "id": report.pk,
        "reason": report.reason,
        "created": report.created,
        "status": "answered" if report.resolved else "open",
        "answer": None
        if answer is None
        else {"action": answer.action, "label": answer.to_label, "at": answer.created},
    }
