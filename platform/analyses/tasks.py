"""Celery tasks: ids in, one service call, nothing returned."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="analyses.analyse_submission", ignore_result=True)
def analyse_submission(submission_id: str) -> None:
    """Analyse one submission (models load lazily inside the worker child)."""
    from analyses.services import run_submission

    run_submission(submission_id)
