"""Helpers to run the real stack in subprocesses: a throwaway site folder
(SQLite, media, embedded queue), a redis-server, a Celery worker, the web server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def site_env(var: Path, weights: Path, cache: Path, broker: str | None = None) -> dict[str, str]:
    """Environment of a local site with the tiny registry, everything under ``var``."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "trusttrace.settings.local",
        "TRUSTTRACE_VAR_DIR": str(var),
        "TRUSTTRACE_REGISTRY": "tests.tiny_registry.REGISTRY",
        "TRUSTTRACE_WEIGHTS_DIR": str(weights),
        "TRUSTTRACE_CACHE_DIR": str(cache),
        "TRUSTTRACE_MEMBERS": "tiny_a,tiny_b",
        "TRUSTTRACE_FRAMES": "4",
        "TRUSTTRACE_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
    }
    env.pop("CELERY_BROKER_URL", None)
    if broker:
        env["CELERY_BROKER_URL"] = broker
    return env


def manage(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, stopped (SIGTERM, then SIGKILL) on exit."""
    with log.open("wb") as fh:
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    """A private redis-server on a free port; yields its URL."""
    import redis

    port = free_port()
    args = [
        REDIS,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp),
    ]
    with process(args, dict(os.environ), tmp / "redis.log"):
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"


def worker_args() -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "trusttrace",
        "worker",
        "--pool=solo",
        "--concurrency=1",
        "-Q",
        "trusttrace",
        "--loglevel=INFO",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
