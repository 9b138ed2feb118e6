"""The compose stack serves the site through a reverse proxy (issue 17):
gunicorn is not published, nginx terminates TLS, limits and buffers request
bodies and appends the client address the log-in throttle reads; and the
production settings with the compose defaults pass ``check --deploy``."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.platform import stack
from tests.platform.failing_stream import BODY_SENT
from tests.platform.stack import ROOT

COMPOSE = ROOT / "docker" / "compose.yml"
NGINX = ROOT / "docker" / "nginx.conf"
NGINX_BIN = shutil.which("nginx") or "/usr/sbin/nginx"
SECRET = "s" * 20 + "0123456789abcdefghijklmnopqrstuvwxyz-_+=!"
# What the operator puts in trusttrace.env besides: the server that sends mail.
MAIL = {"DJANGO_EMAIL_HOST": "smtp.example.org", "DJANGO_DEFAULT_FROM_EMAIL": "tt@example.org"}


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``manage.py ARGS`` in a fresh process with ``env``."""
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


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
    # The web service's address is looked up again (a recreated container
    # has a new one); before, once at nginx's start, so 502s until a restart.
    assert "resolver 127.0.0.11 valid=10s" in conf
    assert "set $trusttrace_web http://web:8000;" in conf
    assert "proxy_pass $trusttrace_web;" in conf


def _site_proxy_directives() -> list[str]:
    """The HTTPS site's ``proxy_*`` directives (server and ``location /``),
    but its ``proxy_pass`` (Docker's service name and resolver)."""
    site = NGINX.read_text().split("listen 443 ssl;", 1)[1]
    lines = [line.strip() for line in site.splitlines()]
    return [d for d in lines if d.startswith("proxy_") and not d.startswith("proxy_pass ")]


def _site_maps() -> str:
    """The ``map`` blocks the site's directives read variables from."""
    return " ".join(re.findall(r"^map [^{]+\{[^}]*\}", NGINX.read_text(), re.MULTILINE))


def _fetch_through_nginx(
    tmp: Path,
    directives: list[str],
    path: str = "/reports/submissions.csv",
    headers: dict[str, str] | None = None,
) -> tuple[bytes, bool]:
    """GET ``path`` from nginx (``directives``, and the site's maps, in front
    of gunicorn running :mod:`tests.platform.failing_stream`): what the client
    received, and whether it could tell the response was cut short."""
    tmp.mkdir(parents=True)
    upstream, port = stack.free_port(), stack.free_port()
    temp = " ".join(
        f"{kind}_temp_path {tmp / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"daemon off; pid {tmp / 'nginx.pid'}; error_log {tmp / 'nginx-error.log'};\n"
        "events {}\n"
        f"http {{ access_log off; {temp} {_site_maps()}\n"
        f"  server {{ listen 127.0.0.1:{port}; {' '.join(directives)}\n"
        f"    location / {{ proxy_pass http://127.0.0.1:{upstream}; }} }} }}\n"
    )
    gunicorn = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{upstream}", "-w", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with (
        stack.process([*gunicorn, "tests.platform.failing_stream:app"], env, tmp / "gunicorn.log"),
        stack.process([NGINX_BIN, "-c", str(conf)], env, tmp / "nginx.log"),
    ):
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
                conn.request("GET", path, headers=headers or {})
                response = conn.getresponse()
                if response.status == 200:
                    break
                response.read()
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError((tmp / "nginx-error.log").read_text())
            time.sleep(0.2)
        try:
            return response.read(), False
        except http.client.IncompleteRead as cut:
            return cut.partial, True


def test_the_proxy_passes_the_host_on_with_its_port(tmp_path: Path) -> None:
    """Published on 8443, the browser's Origin is https://host:8443; nginx's
    $host dropped the port, so Django's CSRF check refused every form."""
    if not Path(NGINX_BIN).exists():
        pytest.skip("nginx is not installed (make test installs it as root)")
    directives = _site_proxy_directives()
    received, _ = _fetch_through_nginx(
        tmp_path / "port", directives, "/echo-host", {"Host": "trusttrace.example.org:8443"}
    )
    assert received == b"trusttrace.example.org:8443"
    received, _ = _fetch_through_nginx(
        tmp_path / "plain", directives, "/echo-host", {"Host": "trusttrace.example.org"}
    )
    assert received == b"trusttrace.example.org"


def test_a_download_that_fails_midway_fails_through_the_proxy_too(tmp_path: Path) -> None:
    """A CSV export whose database goes away after some rows: the client of
    the shipped proxy sees the download fail. Before (HTTP/1.0 to gunicorn),
    nginx passed the cut-off body on as a complete response."""
    if not Path(NGINX_BIN).exists():
        pytest.skip("nginx is not installed (make test installs it as root)")
    directives = _site_proxy_directives()
    assert "proxy_http_version 1.1;" in directives
    received, failed = _fetch_through_nginx(tmp_path / "shipped", directives)
    assert failed and received == BODY_SENT
    older = [
        d
        for d in directives
        if not d.startswith(("proxy_http_version", "proxy_set_header Connection"))
    ]
    received, failed = _fetch_through_nginx(tmp_path / "http10", older)
    assert not failed and received == BODY_SENT  # what the test guards against


def test_the_body_limit_leaves_room_for_a_file_and_its_reference() -> None:
    limit_mib = int(re.findall(r"client_max_body_size (\d+)m;", NGINX.read_text())[0])
    env = _defaults(_compose()["x-env"])
    upload = int(env.get("TRUSTTRACE_MAX_UPLOAD_BYTES", str(1024**3)))
    assert limit_mib * 2**20 >= 2 * upload


def test_production_settings_with_the_compose_defaults_pass_check_deploy() -> None:
    env = {**os.environ, **_defaults(_compose()["x-env"]), "DJANGO_SECRET_KEY": SECRET, **MAIL}
    env["DJANGO_ALLOWED_HOSTS"] = "trusttrace.example.org"
    out = _manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert out.returncode == 0, out.stdout + out.stderr
    code = (
        "from django.conf import settings; print(settings.TRUSTED_PROXY_HEADER, "
        "settings.SECURE_SSL_REDIRECT, settings.SESSION_COOKIE_SECURE)"
    )
    shown = _manage(env, "shell", "-c", code)
    assert shown.stdout.split()[-3:] == ["X-Forwarded-For", "True", "True"], shown.stderr


# --- Running for good: restarts, migrations, upgrades, settings ------------------

DOCKERFILE = ROOT / "docker" / "Dockerfile"


def _settings_under(env: dict[str, str], *names: str) -> list[str]:
    """``settings.NAME`` for each name, in a process with ``env``."""
    code = "from django.conf import settings; " + "; ".join(
        f"print(settings.{name})" for name in names
    )
    out = _manage(env, "shell", "-c", code)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-len(names) :]


def _dockerfile_env() -> dict[str, str]:
    """The Dockerfile's ``TRUSTTRACE_*`` ``ENV`` values."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    block = re.search(r"^ENV (.+)$", text, re.MULTILINE)
    assert block is not None
    return {k: v for k, v in re.findall(r"(\w+)=(\S+)", block.group(1)) if "TRUSTTRACE_" in k}


def test_the_web_image_s_collectstatic_step_starts_django(tmp_path: Path) -> None:
    """The image runs collectstatic under the production settings with only
    the Dockerfile's own environment; when those settings began to require a
    shared cache and a mail server, the image stopped building."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    step = re.search(r"^RUN ((?:\w+=\S+\s+)+)python manage\.py collectstatic", text, re.M)
    assert step is not None
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "REDIS_", "TRUSTTRACE_", "POSTGRES_", "DATABASE_"))
    }
    env |= {"DJANGO_SETTINGS_MODULE": "trusttrace.settings.production", **_dockerfile_env()}
    env |= dict(re.findall(r"(\w+)=(\S+)", step.group(1)))
    env["TRUSTTRACE_STATIC_ROOT"] = str(tmp_path / "static")
    env["TRUSTTRACE_VAR_DIR"] = str(tmp_path / "data")
    out = _manage(env, "collectstatic", "--noinput", "--dry-run")
    assert out.returncode == 0, out.stderr[-2000:]


def test_services_come_back_after_a_crash_or_a_reboot() -> None:
    services = _compose()["services"]
    for name in ("postgres", "redis", "web", "proxy", "worker"):
        # Before: no restart policy, so one crash or a reboot left it down
        # (and with no worker, no reaper re-queued anything).
        assert services[name].get("restart") == "unless-stopped", name
    # The one-shot migration must end `up` with its error, not retry forever.
    assert "restart" not in services["migrate"]
    check = " ".join(services["postgres"]["healthcheck"]["test"])
    # Over TCP: the image's first-boot init server answers on the socket only.
    assert "pg_isready -h 127.0.0.1" in check


def test_migrations_run_once_before_web_and_workers_start() -> None:
    services = _compose()["services"]
    assert services["migrate"]["command"] == ["python", "manage.py", "migrate", "--noinput"]
    for name in ("web", "worker"):
        # Before: web migrated as it started, while the worker (and every
        # scaled web) started beside it on the old schema.
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
        assert "migrate" not in str(services[name].get("command", ""))


def test_settings_in_trusttrace_env_reach_the_containers() -> None:
    services = _compose()["services"]
    for name in ("migrate", "web", "worker"):
        # Before: only x-env's names reached the containers, so
        # TRUSTTRACE_DEVICE, TRUSTTRACE_MEMBERS, the limits... were ignored.
        assert services[name]["env_file"] == "trusttrace.env"
    assert (ROOT / "docker" / "trusttrace.env").is_file()
    # The worker's process count comes from the settings, not a fixed flag.
    worker_cmd = re.search(r"^CMD .+worker.+$", DOCKERFILE.read_text(), re.MULTILINE)
    assert worker_cmd is not None and "--concurrency" not in worker_cmd.group(0)


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", text))


def test_a_stopped_worker_finishes_its_analysis_and_static_files_follow_the_image() -> None:
    services = _compose()["services"]
    env = {
        **os.environ,
        **_defaults(_compose()["x-env"]),
        **_dockerfile_env(),
        "DJANGO_SECRET_KEY": SECRET,
        "DJANGO_ALLOWED_HOSTS": "trusttrace.example.org",
        **MAIL,
    }
    limit, static_root = _settings_under(env, "CELERY_TASK_TIME_LIMIT", "STATIC_ROOT")
    # Before: Docker's 10 s default killed the running analysis on every stop.
    assert _seconds(services["worker"]["stop_grace_period"]) >= float(limit)
    # Before: collected into /data/static, under the media volume, which keeps
    # its first contents: an upgraded image's static files never reached it.
    for volume in services["web"]["volumes"]:
        target = volume.split(":")[1]
        assert not Path(static_root).is_relative_to(target), (static_root, volume)


def test_the_build_context_leaves_out_the_local_environment_and_data() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".venv", "var", ".git", "weights"):
        assert path in ignored
