"""Deployment: production settings pass ``check --deploy``; compose validates."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.platform.stack import ROOT

SECRET = "s" * 20 + "0123456789abcdefghijklmnopqrstuvwxyz-_+=!"


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _prod_env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "trusttrace.settings.production",
        "DJANGO_ALLOWED_HOSTS": "trusttrace.example.org",
        **extra,
    }
    env.pop("DJANGO_SECRET_KEY", None)
    env.update(extra)
    return env


def test_production_settings_pass_check_deploy() -> None:
    out = _manage(
        _prod_env(DJANGO_SECRET_KEY=SECRET), "check", "--deploy", "--fail-level", "WARNING"
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no issues" in out.stdout


def test_production_refuses_to_start_without_a_secret_key() -> None:
    out = _manage(_prod_env(), "check")
    assert out.returncode != 0 and "DJANGO_SECRET_KEY must be set" in out.stderr


def test_database_url_selects_postgres(tmp_path) -> None:
    code = "from django.conf import settings; print(settings.DATABASES['default']['ENGINE'])"
    env = _prod_env(DJANGO_SECRET_KEY=SECRET, DATABASE_URL="postgres://u:p@db:5432/tt")
    out = _manage(env, "shell", "-c", code)
    assert out.stdout.strip().splitlines()[-1] == "django.db.backends.postgresql", out.stderr


def test_compose_file_validates() -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed")
    out = subprocess.run(
        [tool, "-f", str(ROOT / "docker" / "compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    for service in ("postgres:", "redis:", "web:", "worker:"):
        assert service in out.stdout
    assert "gunicorn trusttrace.wsgi:application" in out.stdout
    assert "target: worker" in out.stdout and "target: web" in out.stdout
