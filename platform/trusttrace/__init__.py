"""The Django project. Importing it loads the Celery app, so ``shared_task``
decorators bind to it in every process."""

from __future__ import annotations

from trusttrace.celery import app as celery_app

__all__ = ("celery_app",)
