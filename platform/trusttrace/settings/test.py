"""Test settings: an in-memory database and throwaway folders."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import environ

from ensemble.config import BACKENDS

from .base import *  # noqa: F403
from .base import REST_FRAMEWORK, TRUSTTRACE
from .env import env_choice

SECRET_KEY = "test-only-not-secret"  # noqa: S105
DEBUG = False
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
# The suite on Postgres, as production runs (README, "Tests of the site"):
# TRUSTTRACE_TEST_DATABASE_URL=postgres://user@host:5432/db (pytest-django
# creates and drops test_<db> beside it).
if os.environ.get("TRUSTTRACE_TEST_DATABASE_URL"):
    DATABASES = {"default": environ.Env().db("TRUSTTRACE_TEST_DATABASE_URL")}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
_TMP = Path(tempfile.gettempdir()) / "trusttrace-test"
# The in-process tests run the members on ONNX Runtime: this one process
# compiles and frees hundreds of tiny models, and with OpenVINO (the
# production default on CPU) such a process crashed at a later fork. The
# real-worker tests (tests/platform/test_worker.py, tests/e2e) start their
# workers with the default, and tests marked ``openvino`` cover it in-process.
TRUSTTRACE = {
    **TRUSTTRACE,
    "CACHE_DIR": _TMP / "cache",
    "BACKEND": env_choice("TRUSTTRACE_BACKEND", BACKENDS, "onnxruntime"),
}
MEDIA_ROOT = _TMP / "media"
# Unit tests call the service directly; the worker tests start their own broker.
CELERY_BROKER_URL = "memory://"
CELERY_BROKER_TRANSPORT_OPTIONS = {}
CELERY_BROKER_TRANSPORT = None  # base chose the embedded queue's from the environment
TRUSTTRACE["PROGRESS_INTERVAL_S"] = 0.0
# The request rate limit counts in the shared local cache across tests (user
# ids repeat after each rollback); tests/platform/test_quotas.py sets a rate.
REST_FRAMEWORK = {**REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"user": None}}
