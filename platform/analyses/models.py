"""Submissions and the explanation artifacts stored for them."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models


class Status(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    REJECTED = "rejected", "Rejected"  # bad input: final, never retried
    FAILED = "failed", "Failed"  # our fault: logged, a moderator may retry


class Verdict(models.TextChoices):
    FAKE = "fake", "Fake"
    UNCERTAIN = "uncertain", "Uncertain"
    REAL = "real", "Real"
    NO_FACE = "no_face", "No face found"


class Kind(models.TextChoices):
    IMAGE = "image", "Image"
    VIDEO = "video", "Video"


FINISHED = (Status.DONE, Status.REJECTED, Status.FAILED)
# Content Credentials states (ensemble.provenance.STATES; the site does not
# import the detection core outside analyses.services), and those whose
# signature and binding to the file check out.
PROVENANCE_STATES = ("valid", "untrusted", "invalid", "absent", "unchecked")
PROVENANCE_INTACT = ("valid", "untrusted")


# Formats read as videos (frames over time) that browsers show as pictures.
ANIMATED_PICTURE_FORMATS = frozenset({"gif", "apng", "webp"})


class Submission(models.Model):
    """One uploaded image or video and the outcome of its analysis.

    ``file`` lives under MEDIA_ROOT with a random name; ``original_name`` is
    display text only and is never used to build a path.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="submissions"
    )
    title = models.CharField(max_length=200, blank=True)
    original_name = models.CharField(max_length=255)
    file = models.FileField(upload_to="uploads/", max_length=255)
    sha256 = models.CharField(max_length=64, db_index=True)
    size_bytes = models.BigIntegerField(default=0)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    media_format = models.CharField(max_length=16, blank=True)
    reference_file = models.FileField(upload_to="uploads/", max_length=255, blank=True)
    reference_name = models.CharField(max_length=255, blank=True)
    reference_sha256 = models.CharField(max_length=64, blank=True)
    # Counted with size_bytes against the owner's storage quota. The database
    # default lets code that predates the column (a rolling deploy, an older
    # migration's state) still insert rows.
    reference_size_bytes = models.BigIntegerField(default=0, db_default=0)

    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    stage = models.CharField(max_length=64, blank=True)
    percent = models.PositiveSmallIntegerField(default=0)
    reason = models.TextField(blank=True)
    reason_code = models.CharField(max_length=32, blank=True)

    verdict = models.CharField(max_length=10, choices=Verdict.choices, blank=True, db_index=True)
    score = models.FloatField(null=True, blank=True, db_index=True)
    threshold = models.FloatField(null=True, blank=True)
    uncertain_band = models.FloatField(null=True, blank=True)
    members = models.JSONField(default=dict, blank=True)  # member -> calibrated score
    result = models.JSONField(default=dict, blank=True)  # AnalysisResult.to_dict()
    model_versions = models.JSONField(default=dict, blank=True)  # member -> weights sha256
    timings = models.JSONField(default=dict, blank=True)
    series = models.JSONField(default=dict, blank=True)  # index.json "series" (chart data)
    # The file's C2PA Content Credentials as read at upload
    # (ensemble.provenance.ProvenanceSummary.to_dict(); empty: never read).
    provenance = models.JSONField(default=dict, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    # The job's last sign of life (analyses.services.reaper): when its message
    # was last sent while pending (null: never sent, the broker was down), the
    # worker's last heartbeat while running.
    heartbeat = models.DateTimeField(null=True, blank=True, db_index=True)
    worker = models.CharField(max_length=128, blank=True)  # "host:pid" that claimed it

    created = models.DateTimeField(auto_now_add=True, db_index=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created",)

    def __str__(self) -> str:
        return f"{self.display_title} ({self.status})"

    @property
    def plays_in_video_player(self) -> bool:
        """Whether a page shows the file in ``<video>``: a video, not an
        animated picture (GIF, APNG), which browsers show in ``<img>``."""
        return self.kind == Kind.VIDEO and self.media_format not in ANIMATED_PICTURE_FORMATS

    @property
    def display_title(self) -> str:
        """The title, or the original file name when there is none."""
        return self.title or self.original_name

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    @property
    def persons(self) -> list[dict[str, Any]]:
        persons = self.result.get("persons", []) if isinstance(self.result, dict) else []
        return list(persons)

    @property
    def provenance_state(self) -> str:
        """``valid``, ``untrusted``, ``invalid``, ``absent``, ``unchecked``; ``""``
        when the file's Content Credentials were never read (uploaded before)."""
        p = self.provenance if isinstance(self.provenance, dict) else {}
        return str(p.get("state") or "")

    @property
    def provenance_says_ai(self) -> bool:
        """An intact manifest (valid, or signed by a signer not on the trust
        list) declares that a trained model made or changed the media."""
        p = self.provenance if isinstance(self.provenance, dict) else {}
        return bool(p.get("ai_generated")) and self.provenance_state in PROVENANCE_INTACT

    @property
    def provenance_ai_partly(self) -> bool:
        """Every AI action of the manifest is a composite (part of the media)."""
        p = self.provenance if isinstance(self.provenance, dict) else {}
        kinds = {a.get("source_type") for a in p.get("actions") or [] if a.get("ai")}
        return kinds == {"compositeWithTrainedAlgorithmicMedia"}

    @property
    def frame_rows(self) -> list[dict[str, Any]]:
        frames = self.result.get("frames", []) if isinstance(self.result, dict) else []
        return list(frames)


class ArtifactKind(models.TextChoices):
    FACE = "face", "Face"
    FRAME = "frame", "Whole frame"
    GRADCAM = "gradcam", "Grad-CAM"
    ATTENTION = "attention", "Attention map"
    SSIM_TEMPORAL = "ssim_temporal", "SSIM (temporal)"
    SSIM_REFERENCE = "ssim_reference", "SSIM (reference)"
    CHART = "chart", "Chart"


class Artifact(models.Model):
    """One file of an explanation (an entry of the explainer's index.json)."""

    submission = models.ForeignKey(Submission, on_delete=models.CASCADE, related_name="artifacts")
    kind = models.CharField(max_length=16, choices=ArtifactKind.choices)
    file = models.FileField(upload_to="artifacts/", max_length=255)
    frame = models.IntegerField(null=True, blank=True)
    time = models.FloatField(null=True, blank=True)
    person = models.IntegerField(null=True, blank=True)
    member = models.CharField(max_length=64, blank=True)
    caption = models.CharField(max_length=300, blank=True)
    width = models.PositiveIntegerField(default=0)
    height = models.PositiveIntegerField(default=0)
    media_type = models.CharField(max_length=64, default="image/png")

    class Meta:
        ordering = ("kind", "frame", "person", "member")

    def __str__(self) -> str:
        return f"{self.kind} frame {self.frame} person {self.person} {self.member}"


class WeightsVersion(models.Model):
    """A member's installed weights as last seen by the site (read-only in the admin)."""

    member = models.CharField(max_length=64)
    weights_sha256 = models.CharField(max_length=64)
    architecture = models.CharField(max_length=128, blank=True)
    input_size = models.PositiveIntegerField(default=0)
    # The calibration last seen for these weights (calibrate_member changes
    # it without changing the weights): sigmoid(logit / temperature + bias).
    temperature = models.FloatField(default=1.0)
    bias = models.FloatField(default=0.0, db_default=0.0)
    provenance = models.JSONField(default=dict, blank=True)
    first_seen = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("member", "-first_seen")
        constraints = (
            models.UniqueConstraint(fields=("member", "weights_sha256"), name="unique_weights"),
        )

    def __str__(self) -> str:
        return f"{self.member} {self.weights_sha256[:12]}"
