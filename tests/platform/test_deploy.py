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
