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


@shared_task(base=AnalysisTask, name="analyses.analyse_submission", ignore_result=True)
def analyse_submission(submission_id: str) -> None:
    """Analyse one submission (models load lazily inside the worker child)."""
    from analyses.services import run_submission

    run_submission(submission_id)
