"""Base settings. Everything a deployment changes comes from the environment;
the defaults run on one machine with SQLite and no external server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import django_stubs_ext
import environ
from django.core.exceptions import ImproperlyConfigured

from ensemble.config import (
    AGGREGATIONS,
    BACKENDS,
    DEFAULT_MEMBERS,
    DEFAULT_MIRROR,
    PRECISIONS,
)

from .env import env_bool, env_choice, env_float, env_int, env_list, env_path, env_str

# Lets the typed generics of django-stubs (ModelAdmin[Model], ...) run.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parents[3]  # the repository root

SECRET_KEY = env_str("DJANGO_SECRET_KEY", "")
# Set by the settings module, not the environment: local.py debugs (one
# machine), production.py never does.
DEBUG = False
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "accounts",
    "analyses",
    "moderation",
    "reports",
    "api",
]

MIDDLEWARE = [
    # Outermost: an /api/ error that is a page (Django's 400, DEBUG's 404/500) becomes JSON.
    "trusttrace.errors.ApiErrorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Before CsrfViewMiddleware, which reads the whole body of every POST.
    "analyses.limits.UploadLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Answers to signed-in users and API tokens: Cache-Control no-store.
    "trusttrace.middleware.PrivateResponsesMiddleware",
]

ROOT_URLCONF = "trusttrace.urls"
WSGI_APPLICATION = "trusttrace.wsgi.application"
ASGI_APPLICATION = "trusttrace.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "platform" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context.roles",
            ]
        },
    }
]

VAR_DIR = env_path("TRUSTTRACE_VAR_DIR", BASE_DIR / "var")

# DATABASE_URL (any django-environ URL) wins; then Postgres when POSTGRES_DB is
# set (Docker installs); SQLite otherwise.
_env = environ.Env()
if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": _env.db("DATABASE_URL")}
elif os.environ.get("POSTGRES_DB"):
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ["POSTGRES_DB"],
            "USER": env_str("POSTGRES_USER", "trusttrace"),
            "PASSWORD": env_str("POSTGRES_PASSWORD", ""),
            "HOST": env_str("POSTGRES_HOST", "localhost"),
            "PORT": env_str("POSTGRES_PORT", "5432"),
            "CONN_MAX_AGE": env_int("POSTGRES_CONN_MAX_AGE", 60),
            "CONN_HEALTH_CHECKS": True,
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_path("TRUSTTRACE_SQLITE", VAR_DIR / "trusttrace.sqlite3"),
            # The web process, the worker (progress, heartbeats) and its reaper
            # write to one file: write-ahead logging lets readers go on while one
            # writes; a transaction takes the write lock when it begins, so one
            # that reads and then writes waits its turn (up to the timeout)
            # instead of failing at once with "database is locked".
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
# The images collect static files into the image (/app/static), not under the
# /data volume: a volume keeps its first contents, so an upgrade's files
# would never reach it.
STATIC_ROOT = env_path("TRUSTTRACE_STATIC_ROOT", VAR_DIR / "static")
STATICFILES_DIRS = [BASE_DIR / "platform" / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Uploads and artifacts. Never served by URL: only permission-checked views
# stream them (analyses.views.submission_file / artifact_file).
MEDIA_ROOT = env_path("TRUSTTRACE_MEDIA_ROOT", VAR_DIR / "media")
# Uploads above this many bytes go to a temporary file, not memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 2**20
FILE_UPLOAD_PERMISSIONS = 0o640
# The first handler stops reading a file part at the upload limit.
FILE_UPLOAD_HANDLERS = [
    "analyses.limits.LimitedUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": f"django.contrib.auth.password_validation.{name}"}
    for name in (
        "UserAttributeSimilarityValidator",
        "MinimumLengthValidator",
        "CommonPasswordValidator",
        "NumericPasswordValidator",
    )
]

LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "analyses:list"
LOGOUT_REDIRECT_URL = "accounts:login"
EMAIL_BACKEND = env_str("DJANGO_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DJANGO_DEFAULT_FROM_EMAIL", "trusttrace@localhost")
# The SMTP server the smtp backend hands mail to (verification and
# password-reset links); production settings refuse to start without one.
EMAIL_HOST = env_str("DJANGO_EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("DJANGO_EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("DJANGO_EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("DJANGO_EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("DJANGO_EMAIL_USE_TLS", False)  # STARTTLS, usually port 587
EMAIL_USE_SSL = env_bool("DJANGO_EMAIL_USE_SSL", False)  # implicit TLS, usually port 465
EMAIL_TIMEOUT = env_int("DJANGO_EMAIL_TIMEOUT", 30)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured(
        "DJANGO_EMAIL_USE_TLS and DJANGO_EMAIL_USE_SSL are both set: choose one "
        "(TLS: STARTTLS, usually port 587; SSL: implicit TLS, usually port 465)"
    )

# Login throttling (accounts.throttle): failures per username+IP in a window.
LOGIN_MAX_FAILURES = env_int("TRUSTTRACE_LOGIN_MAX_FAILURES", 5)
LOGIN_LOCKOUT_S = env_int("TRUSTTRACE_LOGIN_LOCKOUT_S", 900)
# Failed log-ins from one address across all user names, in the same window.
LOGIN_MAX_FAILURES_PER_IP = env_int("TRUSTTRACE_LOGIN_MAX_FAILURES_PER_IP", 50)
# Behind a reverse proxy: the header it appends the client address to (e.g.
# X-Forwarded-For) and how many proxies append to it; empty: REMOTE_ADDR.
TRUSTED_PROXY_HEADER = env_str("TRUSTTRACE_TRUSTED_PROXY_HEADER", "")
TRUSTED_PROXY_COUNT = env_int("TRUSTTRACE_TRUSTED_PROXY_COUNT", 1)
# Password reset e-mails per hour: per client address (then 429), per address
# asked for (then silently not sent again: no enumeration, no mail bombing).
PASSWORD_RESET_MAX_PER_IP = env_int("TRUSTTRACE_PASSWORD_RESET_MAX_PER_IP", 5)
PASSWORD_RESET_MAX_PER_EMAIL = env_int("TRUSTTRACE_PASSWORD_RESET_MAX_PER_EMAIL", 3)
# Accounts one client address may create per hour (then 429): the upload
# quotas are per account, so unlimited sign-ups would multiply them.
SIGNUP_MAX_PER_IP = env_int("TRUSTTRACE_SIGNUP_MAX_PER_IP", 5)
# Different e-mail addresses a client network (IPv6: its /64) may be told
# already have an account within an hour's window; past that every sign-up
# from it is refused (429) until the window ends, so the form cannot be used
# to test a list of addresses.
SIGNUP_TAKEN_MAX_PER_IP = env_int("TRUSTTRACE_SIGNUP_TAKEN_MAX_PER_IP", 10)
# A sign-up's e-mail verification link (accounts.verification) is refused
# once older than this.
EMAIL_VERIFICATION_MAX_AGE_S = env_int("TRUSTTRACE_EMAIL_VERIFICATION_MAX_AGE_S", 3 * 86400)
# API tokens expire this many seconds after they were issued (0: never); a
# password change or reset deletes the user's token (api.signals).
API_TOKEN_TTL_S = env_int("TRUSTTRACE_API_TOKEN_TTL_S", 30 * 86400)
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "trusttrace",
    }
}
if os.environ.get("REDIS_CACHE_URL"):
    CACHES["default"] = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": os.environ["REDIS_CACHE_URL"],
    }

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "api.authentication.ExpiringTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "api.pagination.Pages",
    "PAGE_SIZE": 50,
    # Requests per signed-in user (uploads have their own limits: quotas).
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.UserRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"user": env_str("TRUSTTRACE_API_RATE", "2000/hour")},
    "NUM_PROXIES": TRUSTED_PROXY_COUNT if TRUSTED_PROXY_HEADER else None,
    # Refusals (analyses.services.Refusal) answered with their status and code.
    "EXCEPTION_HANDLER": "api.views.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Trusttrace API",
    "DESCRIPTION": "Submit media for deepfake analysis, poll progress, read results.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
}

# Celery. Redis for real installs (CELERY_BROKER_URL=redis://...); without it
# the broker is kombu's filesystem transport under var/queue, so a single
# machine needs no server (see README, "The embedded transport").
QUEUE_DIR = env_path("TRUSTTRACE_QUEUE_DIR", VAR_DIR / "queue")
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = (
    {
        "data_folder_in": str(QUEUE_DIR / "out"),
        "data_folder_out": str(QUEUE_DIR / "out"),
        "processed_folder": str(QUEUE_DIR / "processed"),
        "control_folder": str(QUEUE_DIR / "control"),
        "store_processed": False,
    }
    if CELERY_BROKER_URL.startswith("filesystem")
    else {}
)
# kombu's filesystem transport, with messages renamed into the queue once whole.
CELERY_BROKER_TRANSPORT = (
    "trusttrace.fsqueue:Transport" if CELERY_BROKER_URL.startswith("filesystem") else None
)
CELERY_TASK_IGNORE_RESULT = True  # the service writes status into the database
CELERY_TASK_ACKS_LATE = True  # a worker killed mid-job leaves the message queued
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # long jobs: never hoard messages
CELERY_TASK_SOFT_TIME_LIMIT = env_int("TRUSTTRACE_TASK_SOFT_LIMIT_S", 1800)
CELERY_TASK_TIME_LIMIT = env_int("TRUSTTRACE_TASK_LIMIT_S", 1900)
# Checked here, so every process (web, worker, manage.py) refuses to start: a
# soft limit at or above the hard one made the worker raise on every message.
if not 0 < CELERY_TASK_SOFT_TIME_LIMIT < CELERY_TASK_TIME_LIMIT:
    raise ImproperlyConfigured(
        f"TRUSTTRACE_TASK_SOFT_LIMIT_S ({CELERY_TASK_SOFT_TIME_LIMIT}) must be above 0 and "
        f"below TRUSTTRACE_TASK_LIMIT_S ({CELERY_TASK_TIME_LIMIT}): the soft limit lets a "
        "job fail cleanly before the hard limit kills its process."
    )
CELERY_WORKER_MAX_TASKS_PER_CHILD = env_int("TRUSTTRACE_MAX_TASKS_PER_CHILD", 200)
CELERY_WORKER_CONCURRENCY = env_int("TRUSTTRACE_WORKER_CONCURRENCY", 1)
CELERY_TASK_DEFAULT_QUEUE = "trusttrace"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

LOG_LEVEL = env_choice(
    "TRUSTTRACE_LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), "INFO"
)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
}

# The detection core's settings; analyses.config turns them into one frozen
# ensemble.config.AnalysisConfig.
TRUSTTRACE = {
    "REGISTRY": env_str("TRUSTTRACE_REGISTRY", "ensemble.registry.REGISTRY"),
    "WEIGHTS_DIR": env_path("TRUSTTRACE_WEIGHTS_DIR", BASE_DIR / "weights"),
    "CACHE_DIR": env_path("TRUSTTRACE_CACHE_DIR", VAR_DIR / "cache"),
    # Training runs and their decoded crops live outside the work tree, so a
    # later session on the same machine resumes them (train_detector --resume).
    "RUNS_DIR": env_path("TRUSTTRACE_RUNS_DIR", Path.home() / ".cache" / "trusttrace" / "runs"),
    "CROPS_CACHE_DIR": env_path(
        "TRUSTTRACE_CROPS_CACHE_DIR", Path.home() / ".cache" / "trusttrace" / "crops"
    ),
    "MEMBERS": tuple(env_list("TRUSTTRACE_MEMBERS", DEFAULT_MEMBERS)),
    # Members that also score each face mirrored and average the two
    # (README, "Scoring each face mirrored too"); empty: none. The installed
    # weights/ensemble.json is fitted for one such set (calibrate_ensemble).
    "MIRROR": tuple(env_list("TRUSTTRACE_MIRROR", DEFAULT_MIRROR)),
    "DEVICE": env_str("TRUSTTRACE_DEVICE", "cpu"),
    "THREADS": env_int("TRUSTTRACE_THREADS", 0),
    # "auto": on CPU OpenVINO where installed, else ONNX Runtime, else torch;
    # torch on CUDA. Or "torch", "onnxruntime", "openvino" (README, "Speed").
    "BACKEND": env_choice("TRUSTTRACE_BACKEND", BACKENDS, "auto"),
    # "auto": bf16 on OpenVINO where the CPU has bf16 kernels (AMX or AVX-512
    # BF16), else fp32. Or "fp32", "bf16" (README, "Speed").
    "PRECISION": env_choice("TRUSTTRACE_PRECISION", PRECISIONS, "auto"),
    "FRAMES": env_int("TRUSTTRACE_FRAMES", 32),
    "BATCH_SIZE": env_int("TRUSTTRACE_BATCH_SIZE", 8),
    "THRESHOLD": env_float("TRUSTTRACE_THRESHOLD", 0.5),
    "UNCERTAIN_BAND": env_float("TRUSTTRACE_UNCERTAIN_BAND", 0.1),
    "AGGREGATION": env_choice("TRUSTTRACE_AGGREGATION", AGGREGATIONS, "mean"),
    "MAX_UPLOAD_BYTES": env_int("TRUSTTRACE_MAX_UPLOAD_BYTES", 1024**3),
    "MAX_PIXELS": env_int("TRUSTTRACE_MAX_PIXELS", 40_000_000),
    "MAX_DURATION_S": env_float("TRUSTTRACE_MAX_DURATION_S", 900.0),
    "MAX_FRAMES": env_int("TRUSTTRACE_MAX_FRAMES", 256),
    # A video's frames are held in memory by the analysis, so they get a lower
    # pixel bound than images (3840x2160): uploads above it are refused
    # (analyses.services.probing), and ensemble.media downscales any larger
    # frame while decoding (a file analysed from the command line). Frame rate
    # and frame count no camera makes are refused by ensemble.media from what
    # the container declares, and its demux pass stops at them (0 disables).
    # The upload probe runs in a child stopped after PROBE_TIMEOUT_S or
    # PROBE_MAX_RSS_BYTES.
    "MAX_VIDEO_PIXELS": env_int("TRUSTTRACE_MAX_VIDEO_PIXELS", 3840 * 2160),
    "MAX_FPS": env_float("TRUSTTRACE_MAX_FPS", 240.0),
    "MAX_VIDEO_FRAMES": env_int("TRUSTTRACE_MAX_VIDEO_FRAMES", 900 * 240),
    # Pixels a read of a video may decode per sampled frame, on average, to
    # reach its sampled frames (key frames far apart make a small file cost
    # minutes); 0 disables.
    "MAX_DECODE_PIXELS_PER_FRAME": env_int("TRUSTTRACE_MAX_DECODE_PIXELS_PER_FRAME", 5_000_000_000),
    "PROBE_TIMEOUT_S": env_float("TRUSTTRACE_PROBE_TIMEOUT_S", 20.0),
    "PROBE_MAX_RSS_BYTES": env_int("TRUSTTRACE_PROBE_MAX_RSS_BYTES", 1024**3),
    # How often (seconds) a running job may write its progress to the database.
    "PROGRESS_INTERVAL_S": env_float("TRUSTTRACE_PROGRESS_INTERVAL_S", 0.5),
    # Jobs that never finish (analyses.services.reaper): a running job writes a
    # heartbeat every HEARTBEAT_S; one silent for STALE_RUNNING_S lost its worker.
    # A pending job whose message went out STALE_PENDING_S ago is queued again
    # (a lost message; duplicates are dropped). The reaper runs in every worker
    # at start and every REAPER_INTERVAL_S.
    "HEARTBEAT_S": env_float("TRUSTTRACE_HEARTBEAT_S", 15.0),
    "STALE_RUNNING_S": env_float("TRUSTTRACE_STALE_RUNNING_S", 120.0),
    "STALE_PENDING_S": env_float("TRUSTTRACE_STALE_PENDING_S", 900.0),
    "REAPER_INTERVAL_S": env_float("TRUSTTRACE_REAPER_INTERVAL_S", 60.0),
    # Per-user limits (analyses.services.quotas; 0 disables one): analyses
    # waiting or running, uploads in the last hour, bytes stored.
    "MAX_PENDING_PER_USER": env_int("TRUSTTRACE_MAX_PENDING_PER_USER", 5),
    "MAX_UPLOADS_PER_HOUR": env_int("TRUSTTRACE_MAX_UPLOADS_PER_HOUR", 30),
    "MAX_STORAGE_PER_USER_BYTES": env_int("TRUSTTRACE_MAX_STORAGE_PER_USER_BYTES", 10 * 1024**3),
    # A PEM file of root certificates trusted for C2PA signers on top of the
    # c2pa library's defaults (unset: the defaults only); an unreadable file is
    # logged and the defaults are used (analyses.services.probing).
    "C2PA_TRUST_ANCHORS": env_path("TRUSTTRACE_C2PA_TRUST_ANCHORS", None),
}
# The reaper's clocks, checked here like the time limits above: a heartbeat
# at or past the stale age made live jobs look dead between beats (taken
# from their worker and run twice), and 0 made a loop of database writes.
_clocks = {
    name: cast(float, TRUSTTRACE[name])
    for name in ("HEARTBEAT_S", "STALE_RUNNING_S", "STALE_PENDING_S", "REAPER_INTERVAL_S")
}
for _name in ("HEARTBEAT_S", "STALE_PENDING_S", "REAPER_INTERVAL_S"):
    if not _clocks[_name] > 0:
        raise ImproperlyConfigured(f"TRUSTTRACE_{_name} ({_clocks[_name]}) must be above 0.")
if not _clocks["STALE_RUNNING_S"] >= 2 * _clocks["HEARTBEAT_S"]:
    raise ImproperlyConfigured(
        f"TRUSTTRACE_STALE_RUNNING_S ({_clocks['STALE_RUNNING_S']}) must be at least twice "
        f"TRUSTTRACE_HEARTBEAT_S ({_clocks['HEARTBEAT_S']}): a running job writes a "
        "heartbeat that often, and one silent that long is taken for a dead worker's."
    )
