"""Deployment: production settings pass ``check --deploy``; compose validates."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

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


# What an operator sets besides the secret key: the shared cache and a mail server.
OPERATOR = {
    "REDIS_CACHE_URL": "redis://cache.example.org:6379/1",
    "DJANGO_EMAIL_HOST": "smtp.example.org",
    "DJANGO_DEFAULT_FROM_EMAIL": "trusttrace@example.org",
}
_MAIL_AND_CACHE = (
    "REDIS_CACHE_URL",
    "DJANGO_EMAIL_BACKEND",
    "DJANGO_EMAIL_HOST",
    "DJANGO_DEFAULT_FROM_EMAIL",
    "TRUSTTRACE_EMAIL_TO_LOG",
    "DJANGO_EMAIL_USE_TLS",
    "DJANGO_EMAIL_USE_SSL",
)


def _prod_env(*, operator: bool = True, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "trusttrace.settings.production",
        "DJANGO_ALLOWED_HOSTS": "trusttrace.example.org",
    }
    for name in ("DJANGO_SECRET_KEY", *_MAIL_AND_CACHE):
        env.pop(name, None)
    env.update(OPERATOR if operator else {})
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


def _setting(env: dict[str, str], expr: str) -> str:
    out = _manage(env, "shell", "-c", f"from django.conf import settings; print({expr})")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_production_refuses_a_per_process_cache() -> None:
    """Without Redis each gunicorn worker kept its own log-in and upload
    counts: three workers, three times the guesses before a lockout."""
    env = _prod_env(DJANGO_SECRET_KEY=SECRET)
    del env["REDIS_CACHE_URL"]
    out = _manage(env, "check")
    assert out.returncode != 0 and "REDIS_CACHE_URL must be set" in out.stderr


@pytest.mark.parametrize(
    "mail,refusal",
    [
        ({}, "DJANGO_EMAIL_HOST must name the SMTP server"),
        (
            {"DJANGO_EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend"},
            "sends no mail",
        ),
        ({"DJANGO_EMAIL_HOST": "smtp.example.org"}, "must be a real sender address"),
        (
            {"DJANGO_EMAIL_HOST": "smtp.example.org", "DJANGO_DEFAULT_FROM_EMAIL": "a@b.org"}
            | {"DJANGO_EMAIL_USE_TLS": "1", "DJANGO_EMAIL_USE_SSL": "1"},
            "both set",
        ),
    ],
    ids=["no-server", "console", "localhost-sender", "tls-and-ssl"],
)
def test_production_refuses_to_start_without_a_way_to_send_mail(
    mail: dict[str, str], refusal: str
) -> None:
    """The console backend printed live password-reset links in the web log
    while users were told they had been mailed; SMTP read no server from the
    environment and mailed localhost:25 inside the container."""
    env = _prod_env(operator=False, DJANGO_SECRET_KEY=SECRET, REDIS_CACHE_URL="redis://r:6379/1")
    env.update(mail)
    out = _manage(env, "check")
    assert out.returncode != 0 and refusal in out.stderr, out.stderr


def test_production_reads_the_smtp_server_from_the_environment() -> None:
    env = _prod_env(
        DJANGO_SECRET_KEY=SECRET,
        DJANGO_EMAIL_PORT="587",
        DJANGO_EMAIL_HOST_USER="mailer",
        DJANGO_EMAIL_HOST_PASSWORD="$ecret",
        DJANGO_EMAIL_USE_TLS="yes",
    )
    shown = _setting(
        env,
        "settings.EMAIL_BACKEND, settings.EMAIL_HOST, settings.EMAIL_PORT, "
        "settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD, settings.EMAIL_USE_TLS",
    )
    assert shown == (
        "django.core.mail.backends.smtp.EmailBackend smtp.example.org 587 mailer $ecret True"
    )
    # A trial install may print its mail to the log, when it says so.
    trial = _prod_env(
        operator=False,
        DJANGO_SECRET_KEY=SECRET,
        REDIS_CACHE_URL="redis://r:6379/1",
        DJANGO_EMAIL_BACKEND="django.core.mail.backends.console.EmailBackend",
        TRUSTTRACE_EMAIL_TO_LOG="1",
    )
    assert _setting(trial, "settings.EMAIL_BACKEND").endswith("console.EmailBackend")


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
    for service in ("postgres:", "redis:", "migrate:", "web:", "worker:", "proxy:"):
        assert service in out.stdout
    assert "condition: service_completed_successfully" in out.stdout
    assert "target: worker" in out.stdout and "target: web" in out.stdout


# --- The images install what the code imports ------------------------------------

_LOCAL_PACKAGES = {"ensemble", "explain", "bench", "tests"} | {
    p.name for p in (ROOT / "platform").iterdir() if (p / "__init__.py").exists()
}


def _runtime_imports(path: Path) -> set[str]:
    """Top-level modules ``path`` imports outside ``if TYPE_CHECKING:`` blocks."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def _requirement_files(path: Path) -> list[Path]:
    """``path`` and the files it names with ``-r``."""
    out = [path]
    for line in path.read_text().splitlines():
        if line.startswith("-r "):
            out += _requirement_files(path.parent / line[3:].strip())
    return out


def _installed_closure(files: list[Path]) -> set[str]:
    """The distributions ``pip install -r`` of ``files`` installs: their
    requirements and, recursively, those requirements' own (extras followed)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    todo: list[tuple[str, frozenset[str]]] = []
    for f in files:
        for line in f.read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-"):
                req = Requirement(line)
                todo.append((req.name, frozenset(req.extras)))
    seen: set[str] = set()
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (canonicalize_name(name), extras) in done:
            continue
        done.add((canonicalize_name(name), extras))
        seen.add(canonicalize_name(name))
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            wanted = req.marker is None or any(
                req.marker.evaluate({"extra": e}) for e in (extras or {""})
            )
            if wanted:
                todo.append((req.name, frozenset(req.extras)))
    return seen


def test_every_module_the_site_imports_is_installed_by_the_images() -> None:
    from packaging.utils import canonicalize_name

    sources = [ROOT / "manage.py"]
    for top in ("platform", "ensemble", "explain"):
        sources += [p for p in (ROOT / top).rglob("*.py") if "migrations" not in p.parts]
    imported: set[str] = set()
    for path in sources:
        imported |= _runtime_imports(path)
    third_party = imported - set(sys.stdlib_module_names) - _LOCAL_PACKAGES - {"__future__"}
    requirements = ROOT / "requirements"
    image = [*_requirement_files(requirements / "ml.txt"), requirements / "nodeps.txt"]
    installed = _installed_closure(image)
    owners = importlib.metadata.packages_distributions()
    missing = {
        module: owners.get(module, ["?"])
        for module in sorted(third_party)
        if not any(canonicalize_name(d) in installed for d in owners.get(module, []))
    }
    # Before: django_stubs_ext (called by the settings) came from dev.txt only,
    # so the images' collectstatic, gunicorn and celery could not start.
    assert not missing, f"imported at run time but not in requirements/ml.txt: {missing}"
