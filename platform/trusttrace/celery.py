"""The Celery application: ``celery -A trusttrace worker``.

Tasks are thin (ids in, one service call); models are loaded lazily inside
the worker's child processes (``analyses.services``), never in the parent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trusttrace.settings.local")

app = Celery("trusttrace")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _on_configured(sender: Celery, **kwargs: Any) -> None:
    ensure_queue_folders(sender)


def ensure_queue_folders(celery_app: Celery = app) -> None:
    """Create the embedded (filesystem) transport's folders when it is used."""
    options = celery_app.conf.broker_transport_options or {}
    for key in ("data_folder_in", "data_folder_out", "control_folder", "processed_folder"):
        if key in options:
            Path(str(options[key])).mkdir(parents=True, exist_ok=True)
