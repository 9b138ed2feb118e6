"""Queueing an analysis: the one place a message for the worker is sent.

A submission's ``heartbeat`` records when its message last went out; ``null``
while pending means it was never sent (the broker was down), and the reaper
(:mod:`.reaper`) sends it once the broker is back.
"""

from __future__ import annotations

import logging
from uuid import UUID

from django.db import transaction
from django.utils import timezone

from analyses.models import Status, Submission
from analyses.services.errors import QueueUnavailable

logger = logging.getLogger(__name__)

QUEUE_DOWN_REASON = (
    "Your file is saved, but the analysis queue is unavailable right now, so the analysis "
    "has not started. It will be queued automatically when the queue is back; nothing "
    "needs to be uploaded again."
)
# Connection attempts when publishing: a down broker answers within seconds.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5}


def enqueue(sub: Submission) -> None:
    """Queue the analysis once the row is committed (ids only).

    Outside a transaction the message goes out at once. Raises
    :class:`QueueUnavailable` when the broker refuses it; the row stays
    ``pending`` with the reason shown to its owner, and nothing is deleted.
    """
    sub_id = str(sub.pk)
    transaction.on_commit(lambda: send(sub_id))


def send(sub_id: UUID | str) -> None:
    """Publish the message for one pending submission and stamp its heartbeat."""
    from analyses.tasks import analyze_submission

    try:
        analyze_submission.apply_async(
            (str(sub_id),), retry=True, retry_policy=PUBLISH_RETRY_POLICY
        )
    except Exception as e:  # any broker failure: the reaper sends it later
        logger.warning("could not queue submission %s: %s: %s", sub_id, type(e).__name__, e)
        # Said to the owner of a new upload; a re-queue keeps its own reason.
        Submission.objects.filter(
            pk=sub_id, status=Status.PENDING, heartbeat=None, reason_code=""
        ).update(reason=QUEUE_DOWN_REASON, reason_code=QueueUnavailable.code)
        raise QueueUnavailable(QUEUE_DOWN_REASON, str(sub_id)) from e
    pending = Submission.objects.filter(pk=sub_id, status=Status.PENDING)
    pending.filter(reason_code=QueueUnavailable.code).update(reason="", reason_code="")
    pending.update(heartbeat=timezone.now())
