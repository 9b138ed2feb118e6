"""The compose stack serves the site through a reverse proxy (issue 17):
gunicorn is not published, nginx terminates TLS, limits and buffers request
bodies and appends the client address the log-in throttle reads; and the
production settings with the compose defaults pass ``check --deploy``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import yaml

from tests.platform.stack import ROOT

COMPOSE = ROOT / "docker" / "compose.yml"
NGINX = ROOT / "docker" / "nginx.conf"
SECRET = "s" * 20 + "0123456789abcdefghijklmnopqrstuvwxyz-_+=!"


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def _defaults(env: dict[str, Any]) -> dict[str, str]:
    """The environment with each ``${NAME:-default}`` at its default."""
    return {key: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value)) for key, value in env.items()}


def test_only_the_proxy_is_published_and_it_serves_https() -> None:
    services = _compose()["services"]
    # Before: gunicorn published on :8000, plain HTTP, behind nothing.
    assert "ports" not in services["web"]
    assert services["proxy"]["ports"] == ["80:80", "443:443"]
    assert (
        services["proxy"]["image"].startswith("nginx:") and "bookworm" in services["proxy"]["image"]
    )
    assert any("nginx.conf" in v for v in services["proxy"]["volumes"])


def test_nginx_terminates_tls_limits_and_buffers_bodies() -> None:
    conf = NGINX.read_text()
    assert "listen 443 ssl;" in conf and "return 301 https://" in conf
    assert re.search(r"client_max_body_size \d+m;", conf)
    assert "proxy_request_buffering on;" in conf
    assert "proxy_set_header X-Forwarded-Proto https;" in conf
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in conf
    assert "proxy_pass http://trusttrace_web;" in conf and "server web:8000;" in conf


def test_the_body_limit_leaves_room_for_a_file_and_its_reference() -> None:
    limit_mib = int(re.findall(r"client_max_body_size (\d+)m;", NGINX.read_text())[0])
    env = _defaults(_compose()["x-env"])
    upload = int(env.get("TRUSTTRACE_MAX_UPLOAD_BYTES", str(1024**3)))
    assert limit_mib * 2**20 >= 2 * upload


def test_production_settings_with_the_compose_defaults_pass_check_deploy() -> None:
    env = {**os.environ, **_defaults(_compose()["x-env"]), "DJANGO_SECRET_KEY": SECRET}
    env["DJANGO_ALLOWED_HOSTS"] = "trusttrace.example.org"
    out = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "check", "--deploy", "--fail-level", "WARNING"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    code = (
        "from django.conf import settings; print(settings.TRUSTED_PROXY_HEADER, "
        "settings.SECURE_SSL_REDIRECT, settings.SESSION_COOKIE_SECURE)"
    )
    shown = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "shell", "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.stdout.split()[-3:] == ["X-Forwarded-For", "True", "True"], shown.stderr
