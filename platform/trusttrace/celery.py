"""The Celery application: ``celery -A trusttrace worker``.

Tasks are thin (ids in, one service call); models are loaded lazily inside
the worker's child processes (``analyses.services``), never in the parent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutting_down

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trusttrace.settings.local")

app = Celery("trusttrace")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _on_configured(sender: Celery, **kwargs: Any) -> None:
    ensure_queue_folders(sender)


@worker_ready.connect
def _start_reaper(**kwargs: Any) -> None:
    """Every worker re-queues or fails stuck jobs at start and periodically
    (``analyses.services.reaper``)."""
    from analyses.services import start_reaper

    start_reaper()


@worker_shutting_down.connect
def _stop_reaper(**kwargs: Any) -> None:
    from analyses.services.reaper import stop_reaper

    stop_reaper()


def ensure_queue_folders(celery_app: Celery = app) -> None:
    """Create the embedded (filesystem) transport's folders when it is used."""
    options = celery_app.conf.broker_transport_options or {}
    for key in ("data_folder_in", "data_folder_out", "control_folder", "processed_folder"):
        if key in options:
            Path(str(options[key])).mkdir(parents=True, exist_ok=True)
