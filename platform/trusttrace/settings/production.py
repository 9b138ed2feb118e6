"""Production: everything from the environment; HTTPS, secure cookies, HSTS.

Required: DJANGO_SECRET_KEY, DJANGO_ALLOWED_HOSTS; DATABASE_URL or POSTGRES_*;
CELERY_BROKER_URL (redis://...); REDIS_CACHE_URL (the throttles' and quotas'
counters, shared by every process); mail: DJANGO_EMAIL_HOST and
DJANGO_DEFAULT_FROM_EMAIL (SMTP, the default here), or
TRUSTTRACE_EMAIL_TO_LOG=1 to accept links printed in the web log. Static
files are served by WhiteNoise.
"""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import CACHES, DEFAULT_FROM_EMAIL, MIDDLEWARE, SECRET_KEY, STORAGES
from .env import env_bool, env_int, env_list, env_str

if len(SECRET_KEY) < 50:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set to a long random value")

# Log-in lockouts, sign-up and reset limits and upload quotas count in the
# cache; a per-process one (LocMem) gives each gunicorn worker its own count,
# multiplying every limit by the number of workers.
if "locmem" in CACHES["default"]["BACKEND"].lower():
    raise ImproperlyConfigured(
        "REDIS_CACHE_URL must be set (redis://host:6379/1): without a shared cache "
        "each web process keeps its own log-in, sign-up and upload counts"
    )

# Mail carries sign-up verification and password-reset links. The console
# backend (the base settings' default, for one machine) would print live
# reset links in the web log and tell users they were sent.
_SMTP = "django.core.mail.backends.smtp.EmailBackend"
_NO_MAIL = {
    f"django.core.mail.backends.{name}.EmailBackend"
    for name in ("console", "filebased", "locmem", "dummy")
}
EMAIL_BACKEND = env_str("DJANGO_EMAIL_BACKEND", _SMTP)
if EMAIL_BACKEND in _NO_MAIL:
    if not env_bool("TRUSTTRACE_EMAIL_TO_LOG", False):
        raise ImproperlyConfigured(
            f"DJANGO_EMAIL_BACKEND={EMAIL_BACKEND!r} sends no mail: verification and "
            "password-reset links would only be printed where the web process logs. Set "
            "DJANGO_EMAIL_HOST (and DJANGO_EMAIL_PORT, DJANGO_EMAIL_HOST_USER, "
            "DJANGO_EMAIL_HOST_PASSWORD, DJANGO_EMAIL_USE_TLS) for the SMTP backend, or "
            "TRUSTTRACE_EMAIL_TO_LOG=1 for a trial install whose log only you can read"
        )
else:  # SMTP, or another package's backend (an e-mail API's)
    if EMAIL_BACKEND == _SMTP and not os.environ.get("DJANGO_EMAIL_HOST"):
        raise ImproperlyConfigured(
            "DJANGO_EMAIL_HOST must name the SMTP server that sends verification and "
            "password-reset mail (with DJANGO_EMAIL_PORT, DJANGO_EMAIL_HOST_USER, "
            "DJANGO_EMAIL_HOST_PASSWORD, DJANGO_EMAIL_USE_TLS as it needs)"
        )
    if DEFAULT_FROM_EMAIL.lower().endswith("@localhost"):
        raise ImproperlyConfigured(
            "DJANGO_DEFAULT_FROM_EMAIL must be a real sender address: mail relays refuse "
            f"{DEFAULT_FROM_EMAIL!r}"
        )

DEBUG = False
MIDDLEWARE = [MIDDLEWARE[0], "whitenoise.middleware.WhiteNoiseMiddleware", *MIDDLEWARE[1:]]
STORAGES = {
    **STORAGES,
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
