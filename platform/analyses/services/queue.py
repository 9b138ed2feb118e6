"""Queueing an analysis: the one place a message for the worker is sent."""

from __future__ import annotations

from django.db import transaction

from analyses.models import Submission


def enqueue(sub: Submission) -> None:
    """Queue the analysis once the row is committed (ids only)."""
    from analyses.tasks import analyse_submission

    sub_id = str(sub.pk)
    transaction.on_commit(lambda: analyse_submission.delay(sub_id))
