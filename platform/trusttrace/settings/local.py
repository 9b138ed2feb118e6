"""One-machine defaults: debug on, SQLite, a development secret key."""

from __future__ import annotations

from .base import *  # noqa: F403
from .base import ALLOWED_HOSTS, SECRET_KEY, VAR_DIR

DEBUG = True
SECRET_KEY = SECRET_KEY or "dev-only-not-secret-trusttrace-local"
# This machine's names, plus DJANGO_ALLOWED_HOSTS: `make run ADDR=0.0.0.0:8000`
# answers other machines only under the names listed there.
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", *ALLOWED_HOSTS]

# SQLite, uploads and the embedded queue live here.
VAR_DIR.mkdir(parents=True, exist_ok=True)
