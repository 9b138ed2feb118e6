"""Re-running and deleting submissions."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from analyses.models import Status, Submission
from analyses.services import queue
from analyses.services.errors import RerunRefused
from analyses.services.members import require_models
from analyses.services.quotas import HOUR_S, note_unsaved_upload
from analyses.services.reaper import is_stale
from analyses.services.storage import artifact_dir

RERUNNABLE = (Status.DONE, Status.FAILED)


def rerun(sub: Submission, record: Callable[[Submission], object] | None = None) -> Submission:
    """Analyse again with the current models (moderators).

    ``record`` is called with the submission as it was, in the transaction
    that claims it (before its result is wiped): the caller's audit record
    goes in with the re-run or not at all.

    Allowed for finished jobs (done or failed) and for stuck ones (pending or
    running but stale, see :func:`.reaper.is_stale`). Refused
    (:class:`RerunRefused`) for ``rejected`` submissions (bad input is final)
    and for jobs that are making progress (a second message would run the
    same submission twice at once). Raises :class:`QueueUnavailable` when the
    broker refuses the message: the job stays pending and the reaper queues it.
    """
    stuck = sub.status in (Status.PENDING, Status.RUNNING) and is_stale(sub)
    if sub.status not in RERUNNABLE and not stuck:
        raise RerunRefused(
            f"This submission is {sub.status} and its job is alive; only finished (done or "
            "failed) or stuck analyses can be run again, and a rejected file stays rejected."
        )
    require_models()
    with transaction.atomic():
        # Only one moderator's re-run wins when two click at once, and a stuck
        # job is taken only as it was seen (not if its worker came back).
        claimed = Submission.objects.filter(
            pk=sub.pk, status=sub.status, attempts=sub.attempts, heartbeat=sub.heartbeat
        ).update(status=Status.PENDING, heartbeat=None)
        if not claimed:
            raise RerunRefused("This submission changed meanwhile; reload the page.")
        if record is not None:
            record(sub)
        sub.artifacts.all().delete()
        # Once committed (and before the message goes out: on_commit keeps
        # order): a re-run rolled back keeps its rows and their files alike.
        folder = artifact_dir(sub)
        transaction.on_commit(lambda: shutil.rmtree(folder, ignore_errors=True))
        sub.status, sub.stage, sub.percent = Status.PENDING, "", 0
        sub.reason = sub.reason_code = sub.verdict = ""
        sub.score = None
        sub.members, sub.result, sub.series, sub.timings, sub.model_versions = {}, {}, {}, {}, {}
        sub.started = sub.finished = sub.heartbeat = None
        sub.save()
    queue.enqueue(sub)
    return sub


def delete_submission(sub: Submission) -> None:
    """Delete a submission with its upload, reference and artifacts (the files
    go in :func:`analyses.signals.remove_submission_files`, once the delete
    is committed)."""
    with transaction.atomic():
        # Where rows lock (Postgres), wait for a worker that is storing this
        # submission's result, so that the artifact rows it adds are deleted
        # too instead of failing the delete at commit.
        list(Submission.objects.select_for_update().filter(pk=sub.pk).values_list("pk"))
        owner, created = sub.owner, sub.created
        sub.delete()
    # An upload of the last hour still counts against its owner's hourly
    # limit once deleted: else upload-and-delete would never reach it.
    if created >= timezone.now() - timedelta(seconds=HOUR_S):
        note_unsaved_upload(owner, "deleted")
