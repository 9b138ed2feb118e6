"""Re-running and deleting submissions."""

from __future__ import annotations

import shutil

from django.db import transaction

from analyses.models import Status, Submission
from analyses.services import queue
from analyses.services.errors import RerunRefused
from analyses.services.members import require_models
from analyses.services.storage import artifact_dir

RERUNNABLE = (Status.DONE, Status.FAILED)


def rerun(sub: Submission) -> Submission:
    """Analyse again with the current models (moderators; done or failed jobs).

    Refused (:class:`RerunRefused`) for ``rejected`` submissions (bad input is
    final) and for jobs still pending or running (a second message would run
    the same submission twice at once).
    """
    if sub.status not in RERUNNABLE:
        raise RerunRefused(
            f"This submission is {sub.status}; only finished (done or failed) analyses can "
            "be run again, and a rejected file stays rejected."
        )
    require_models()
    with transaction.atomic():
        # Only one moderator's re-run wins when two click at once.
        claimed = Submission.objects.filter(pk=sub.pk, status__in=RERUNNABLE).update(
            status=Status.PENDING
        )
        if not claimed:
            raise RerunRefused("This submission was queued again meanwhile.")
        sub.artifacts.all().delete()
        shutil.rmtree(artifact_dir(sub), ignore_errors=True)
        sub.status, sub.stage, sub.percent = Status.PENDING, "", 0
        sub.reason = sub.reason_code = sub.verdict = ""
        sub.score = None
        sub.members, sub.result, sub.series, sub.timings, sub.model_versions = {}, {}, {}, {}, {}
        sub.started = sub.finished = None
        sub.save()
        queue.enqueue(sub)
    return sub


def delete_submission(sub: Submission) -> None:
    """Delete a submission with its upload, reference and artifacts (the files
    go in :func:`analyses.signals.remove_submission_files`)."""
    sub.delete()
