"""Moderator decisions and re-runs (an append-only audit log) and user reports."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from analyses.models import Submission


class Action(models.TextChoices):
    CONFIRM = "confirm", "Confirm the verdict"
    OVERRIDE_REAL = "override_real", "Override: real"
    OVERRIDE_FAKE = "override_fake", "Override: fake"
    ESCALATE = "escalate", "Escalate"


class Label(models.TextChoices):
    """What a submission is after a decision."""

    REAL = "real", "Real"
    FAKE = "fake", "Fake"
    UNCERTAIN = "uncertain", "Uncertain"
    NO_FACE = "no_face", "No face"
    ESCALATED = "escalated", "Escalated"
    NONE = "", "Not decided"


class Decision(models.Model):
    """One moderator decision. Rows are never edited or deleted by the site:
    the table is the audit log (who, when, from, to, note). Deleting the
    submission (its owner may) keeps the row: ``submission`` becomes null and
    ``submission_key`` and ``submission_sha256`` still say which media it was."""

    submission = models.ForeignKey(
        Submission, on_delete=models.SET_NULL, null=True, related_name="decisions"
    )
    # The submission's id and file hash, kept when the submission is deleted.
    submission_key = models.UUIDField(db_index=True)
    submission_sha256 = models.CharField(max_length=64, blank=True)
    moderator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="decisions"
    )
    action = models.CharField(max_length=16, choices=Action.choices)
    from_label = models.CharField(max_length=10, choices=Label.choices, blank=True)
    to_label = models.CharField(max_length=10, choices=Label.choices)
    note = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    # When the analysis decided on finished (``Submission.finished``). A
    # moderator's re-run replaces the analysis; the decision's label still
    # stands for the media, and pages say it was made on an earlier analysis.
    analysis_finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        # Newest first by insertion (decisions on one submission are
        # serialised by its row lock; ``created`` is a web server's clock,
        # which several servers need not agree on).
        ordering = ("-pk",)

    @property
    def on_earlier_analysis(self) -> bool:
        """Made on an analysis that a re-run has since replaced (False once
        the submission is deleted: there is no later analysis)."""
        if self.submission is None:
            return False
        return self.analysis_finished != self.submission.finished

    def __str__(self) -> str:
        return f"{self.action} by {self.moderator_id} on {self.submission_key}"


class Rerun(models.Model):
    """A moderator's re-run of a submission's analysis: who, when, and what
    the analysis it replaced said (a re-run wipes the verdict, score and
    explanations, so this row is what remains of them). Kept, like a
    decision, when the submission is deleted."""

    submission = models.ForeignKey(
        Submission, on_delete=models.SET_NULL, null=True, related_name="reruns"
    )
    submission_key = models.UUIDField(db_index=True)
    moderator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reruns"
    )
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    previous_status = models.CharField(max_length=16)
    previous_verdict = models.CharField(max_length=16, blank=True)
    previous_score = models.FloatField(null=True, blank=True)
    previous_finished = models.DateTimeField(null=True, blank=True)
    # Each member's weights version the replaced analysis ran with.
    previous_model_versions = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ("-pk",)

    def __str__(self) -> str:
        return f"re-run by {self.moderator_id} of {self.submission_key}"


class Report(models.Model):
    """A user's dispute of a verdict; open until a moderator decides."""

    submission = models.ForeignKey(Submission, on_delete=models.CASCADE, related_name="reports")
    reporter = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reports"
    )
    reason = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    resolved = models.BooleanField(default=False)
    # The decision that answered the dispute (who, when, what label, the
    # note). Null while open, and on reports resolved before it was recorded.
    resolved_by = models.ForeignKey(
        Decision,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="resolved_reports",
    )

    class Meta:
        # Insertion order, as decisions: ``created`` is a web server's clock.
        ordering = ("-pk",)

    def __str__(self) -> str:
        return f"report on {self.submission_id}"
