"""Celery tasks: ids in, one service call, nothing returned."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task
from celery.exceptions import TimeLimitExceeded


class AnalysisTask(Task[Any, None]):
    """Marks the job failed when the hard time limit kills its process.

    Celery calls ``on_failure`` in the worker parent for a hard timeout and
    then acknowledges the message (acks_late does not redeliver a timeout);
    without this the submission stayed ``running`` forever.
    """

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if isinstance(exc, TimeLimitExceeded) and args:
            from analyses.services import job_timed_out

            job_timed_out(args[0])


TASK_NAME = "analyses.analyze_submission"
# The task's name before issue 19 spelt it "analyse". Messages queued under it
# before an upgrade still run; remove it once no queue holds one (the reaper
# re-sends a pending job under the new name after STALE_PENDING_S anyway).
OLD_TASK_NAME = "analyses.analyse_submission"


def _analyze(submission_id: str) -> None:
    """Analyze one submission (models load lazily inside the worker child)."""
    from analyses.services import run_submission

    run_submission(submission_id)


analyze_submission = shared_task(base=AnalysisTask, name=TASK_NAME, ignore_result=True)(_analyze)
_old_name = shared_task(base=AnalysisTask, name=OLD_TASK_NAME, ignore_result=True)(_analyze)
