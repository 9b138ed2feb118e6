"""Jobs that never finish, against real worker processes (issue 17): a worker
killed mid-job (embedded transport and Redis), a job over the hard time
limit, Redis stopped during an upload. Nothing is lost and nothing stays
stuck past the reaper's period (shortened here to seconds)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.platform import hang_registry, stack
from tests.tiny_registry import SITE_MEMBERS, install_weights

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).with_name("recovery_driver.py")
# The reaper's period and the heartbeat, shortened so a test takes seconds.
FAST_REAPER = {
    "TRUSTTRACE_HEARTBEAT_S": "1",
    "TRUSTTRACE_STALE_RUNNING_S": "5",
    "TRUSTTRACE_REAPER_INTERVAL_S": "2",
}


@pytest.fixture(scope="session")
def held_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("held-weights")
    return install_weights(folder, SITE_MEMBERS, hang_registry.REGISTRY)


@pytest.fixture
def clip(media_dir: Path) -> Path:
    return media_dir / "face.png"


def _env(tmp: Path, weights: Path, cache: Path, broker: str | None, **extra: str) -> dict:
    env = stack.site_env(tmp / "var", weights, cache, broker=broker)
    env.update(FAST_REAPER)
    env.update(
        TRUSTTRACE_REGISTRY="tests.platform.hang_registry.REGISTRY",
        TRUSTTRACE_BACKEND="torch",
        TRUSTTRACE_TEST_HOLD_FILE=str(tmp / "hold"),
    )
    env.update(extra)
    stack.manage(env, "migrate", "--noinput")
    return env


@contextmanager
def _worker(env: dict, log: Path, pool: str = "solo") -> Iterator[subprocess.Popen[bytes]]:
    """A worker in its own process group (so a test can SIGKILL all of it)."""
    args = [a if a != "--pool=solo" else f"--pool={pool}" for a in stack.worker_args()]
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            args,
            env=env,
            cwd=stack.ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _submit(env: dict, media: Path) -> dict:
    out = subprocess.run(
        [sys.executable, str(DRIVER), str(media)],
        env=env,
        cwd=stack.ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _row(env: dict, sub_id: str) -> dict[str, Any]:
    db = Path(env["TRUSTTRACE_VAR_DIR"]) / "trusttrace.sqlite3"
    with sqlite3.connect(db, timeout=30) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute(
            "SELECT status, stage, reason, reason_code, attempts, worker, file "
            "FROM analyses_submission WHERE id = ?",
            (uuid.UUID(sub_id).hex,),
        ).fetchone()
    return dict(row)


def _wait_status(env: dict, sub_id: str, statuses: set[str], timeout: float) -> dict:
    stack.wait_for(lambda: _row(env, sub_id)["status"] in statuses, timeout, str(statuses))
    return _row(env, sub_id)


def _kill_mid_job_then_restart(env: dict, tmp: Path, clip: Path) -> tuple[dict, str]:
    (tmp / "hold").touch()
    log = tmp / "worker.log"
    with _worker(env, log) as first:
        sub_id = _submit(env, clip)["id"]
        _wait_status(env, sub_id, {"running"}, 120)
        os.killpg(first.pid, signal.SIGKILL)  # no clean shutdown: nothing is returned
        first.wait()
    assert _row(env, sub_id)["status"] == "running"
    (tmp / "hold").unlink()
    with _worker(env, log):
        # Before: the job stayed "running" forever and the new worker got nothing.
        row = _wait_status(env, sub_id, {"done", "failed", "rejected"}, 120)
    return row, log.read_text(errors="replace")


def test_worker_killed_mid_job_over_the_embedded_transport_is_recovered(
    tmp_path: Path, held_weights: Path, blazeface_cache: Path, clip: Path
) -> None:
    env = _env(tmp_path, held_weights, blazeface_cache, None)
    row, log = _kill_mid_job_then_restart(env, tmp_path, clip)
    assert row["status"] == "done", (row, log[-3000:])
    assert row["attempts"] == 2 and "its worker is gone; queued again" in log


def test_worker_killed_mid_job_over_redis_is_recovered(
    tmp_path: Path, held_weights: Path, blazeface_cache: Path, clip: Path
) -> None:
    if not Path(stack.REDIS).exists():
        pytest.skip("redis-server is not installed (make test installs it as root)")
    with stack.redis_server(tmp_path) as url:
        env = _env(tmp_path, held_weights, blazeface_cache, url)
        row, log = _kill_mid_job_then_restart(env, tmp_path, clip)
    assert row["status"] == "done", (row, log[-3000:])
    assert row["attempts"] == 2


def test_job_over_the_hard_time_limit_is_failed_not_left_running(
    tmp_path: Path, held_weights: Path, blazeface_cache: Path, clip: Path
) -> None:
    env = _env(
        tmp_path,
        held_weights,
        blazeface_cache,
        None,
        TRUSTTRACE_TASK_SOFT_LIMIT_S="15",
        TRUSTTRACE_TASK_LIMIT_S="20",
        TRUSTTRACE_TEST_IGNORE_SOFT_LIMIT="1",
    )
    (tmp_path / "hold").touch()
    log = tmp_path / "worker.log"
    with _worker(env, log, pool="prefork"):
        sub_id = _submit(env, clip)["id"]
        # Before: the parent acknowledged the message; the job stayed running.
        row = _wait_status(env, sub_id, {"done", "failed", "rejected"}, 150)
    text = log.read_text(errors="replace")
    assert row["status"] == "failed" and row["reason_code"] == "timed_out", (row, text[-3000:])
    assert "Hard time limit (20" in text and "hard time limit reached; marked failed" in text
    assert "20-second" not in row["reason"] and "time limit" in row["reason"]


@contextmanager
def _redis_on(port: int, tmp: Path) -> Iterator[None]:
    import redis

    args = [
        stack.REDIS,
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
    with stack.process(args, dict(os.environ), tmp / f"redis-{uuid.uuid4().hex[:6]}.log"):
        client = redis.Redis(port=port)
        stack.wait_for(lambda: _pings(client), 20, "redis-server")
        yield


def _pings(client: Any) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_upload_while_redis_is_stopped_is_kept_and_analyzed_once_it_is_back(
    tmp_path: Path, held_weights: Path, blazeface_cache: Path, clip: Path
) -> None:
    if not Path(stack.REDIS).exists():
        pytest.skip("redis-server is not installed (make test installs it as root)")
    port = stack.free_port()
    env = _env(tmp_path, held_weights, blazeface_cache, f"redis://127.0.0.1:{port}/0")
    log = tmp_path / "worker.log"
    with _worker(env, log):
        with _redis_on(port, tmp_path):
            stack.wait_for(lambda: "ready" in log.read_text(errors="replace"), 120, "the worker")
        # Redis is stopped now; the worker keeps running.
        sent = _submit(env, clip)
        # Before: a 500 and the file deleted, the row left pending for ever.
        assert sent["error"] == "queue_unavailable"
        row = _row(env, sent["id"])
        assert row["status"] == "pending" and row["reason_code"] == "queue_unavailable"
        assert (Path(env["TRUSTTRACE_VAR_DIR"]) / "media" / row["file"]).is_file()
        with _redis_on(port, tmp_path):
            row = _wait_status(env, sent["id"], {"done", "failed", "rejected"}, 150)
    assert row["status"] == "done", (row, log.read_text(errors="replace")[-3000:])
