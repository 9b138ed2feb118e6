"""Base settings. Everything a deployment changes comes from the environment;
the defaults run on one machine with SQLite and no external server."""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parents[3]  # the repository root


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in {"1", "true", "yes", "on"}


def env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value) if value else default


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if h]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "analyses",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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
            ]
        },
    }
]

VAR_DIR = env_path("TRUSTTRACE_VAR_DIR", BASE_DIR / "var")

# Postgres when POSTGRES_DB is set (Docker installs); SQLite otherwise.
if os.environ.get("POSTGRES_DB"):
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ["POSTGRES_DB"],
            "USER": os.environ.get("POSTGRES_USER", "trusttrace"),
            "PASSWORD": os.environ.get("POSTGRES_PASSWORD", ""),
            "HOST": os.environ.get("POSTGRES_HOST", "localhost"),
            "PORT": os.environ.get("POSTGRES_PORT", "5432"),
            "CONN_MAX_AGE": int(os.environ.get("POSTGRES_CONN_MAX_AGE", "60")),
            "CONN_HEALTH_CHECKS": True,
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_path("TRUSTTRACE_SQLITE", VAR_DIR / "trusttrace.sqlite3"),
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("TRUSTTRACE_LOG_LEVEL", "INFO")},
}

# The detection core's settings; analyses.config turns them into one frozen
# ensemble.config.AnalysisConfig.
TRUSTTRACE = {
    "REGISTRY": os.environ.get("TRUSTTRACE_REGISTRY", "ensemble.registry.REGISTRY"),
    "WEIGHTS_DIR": env_path("TRUSTTRACE_WEIGHTS_DIR", BASE_DIR / "weights"),
    "CACHE_DIR": env_path("TRUSTTRACE_CACHE_DIR", VAR_DIR / "cache"),
    "MEMBERS": tuple(
        m
        for m in os.environ.get("TRUSTTRACE_MEMBERS", "resnet50,effnet_b7,effnet_autoatt_b4").split(
            ","
        )
        if m
    ),
    "DEVICE": os.environ.get("TRUSTTRACE_DEVICE", "cpu"),
    "THREADS": int(os.environ.get("TRUSTTRACE_THREADS", "0")),
    # "auto": ONNX Runtime on CPU (measured faster, see README), torch on CUDA.
    "BACKEND": os.environ.get("TRUSTTRACE_BACKEND", "auto"),
    "FRAMES": int(os.environ.get("TRUSTTRACE_FRAMES", "32")),
    "BATCH_SIZE": int(os.environ.get("TRUSTTRACE_BATCH_SIZE", "32")),
    "THRESHOLD": float(os.environ.get("TRUSTTRACE_THRESHOLD", "0.5")),
    "UNCERTAIN_BAND": float(os.environ.get("TRUSTTRACE_UNCERTAIN_BAND", "0.1")),
    "AGGREGATION": os.environ.get("TRUSTTRACE_AGGREGATION", "mean"),
    "MAX_UPLOAD_BYTES": int(os.environ.get("TRUSTTRACE_MAX_UPLOAD_BYTES", str(1024**3))),
    "MAX_PIXELS": int(os.environ.get("TRUSTTRACE_MAX_PIXELS", "40000000")),
    "MAX_DURATION_S": float(os.environ.get("TRUSTTRACE_MAX_DURATION_S", "900")),
    "MAX_FRAMES": int(os.environ.get("TRUSTTRACE_MAX_FRAMES", "256")),
}
