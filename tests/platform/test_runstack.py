"""``manage.py runstack`` (what ``make run`` ends with) never leaves its web
server or worker behind: not when the terminal closes (SIGHUP), not when it is
killed outright, and a child that cannot start fails the command."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.platform import stack
from tests.platform.conftest import install_tiny_weights

pytestmark = pytest.mark.slow


@pytest.fixture
def site(tmp_path: Path, blazeface_cache: Path) -> Iterator[dict[str, str]]:
    env = stack.site_env(tmp_path / "var", install_tiny_weights(tmp_path / "w"), blazeface_cache)
    stack.manage(env, "migrate", "--noinput")
    yield env


def _runstack(
    env: dict[str, str], port: int, log: Path, *, nohup: bool = False
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, str(stack.ROOT / "manage.py"), "runstack", f"127.0.0.1:{port}"]

    def hangups() -> None:
        # SIG_IGN is what nohup does; otherwise the default, set explicitly:
        # an ignored SIGHUP is inherited, so a suite run under nohup would
        # otherwise test the nohup case twice.
        signal.signal(signal.SIGHUP, signal.SIG_IGN if nohup else signal.SIG_DFL)

    with log.open("wb") as fh:
        return subprocess.Popen(
            cmd,
            env=env,
            cwd=stack.ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
            preexec_fn=hangups,
        )


def _children_once_up(proc: subprocess.Popen[bytes], port: int, log: Path) -> list[psutil.Process]:
    """runstack's processes (web, worker and its pool) once the site answers."""

    def up() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/models/", timeout=2).status == 200
            )
        except OSError:
            return False

    stack.wait_for(up, 90, "the web server")
    # The worker is up once it says so (its pool exists from then on).
    stack.wait_for(lambda: b"ready." in log.read_bytes(), 90, "the worker")
    return psutil.Process(proc.pid).children(recursive=True)


def _all_gone(processes: list[psutil.Process], timeout: float = 40) -> None:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for p in alive:
        p.kill()
    assert not alive, [p.cmdline()[:4] for p in alive]


def test_closing_the_terminal_stops_web_and_worker(site: dict[str, str], tmp_path: Path) -> None:
    port, log = stack.free_port(), tmp_path / "runstack.log"
    proc = _runstack(site, port, log)
    children = _children_once_up(proc, port, log)
    assert len(children) >= 2
    proc.send_signal(signal.SIGHUP)
    # Before: SIGHUP killed runstack only; the web server kept the port and
    # the worker kept taking jobs.
    assert proc.wait(60) == 0, log.read_text()[-2000:]
    _all_gone(children)
    assert log.read_text().rstrip().endswith("stopped")


def test_under_nohup_a_hangup_stops_nothing(site: dict[str, str], tmp_path: Path) -> None:
    port, log = stack.free_port(), tmp_path / "runstack.log"
    proc = _runstack(site, port, log, nohup=True)
    children = _children_once_up(proc, port, log)
    # runstack's own children: the web server and the worker's main process.
    main = psutil.Process(proc.pid).children(recursive=False)
    assert len(main) == 2
    proc.send_signal(signal.SIGHUP)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(3)
    # Both still run, the worker still has its pool, and the site answers.
    # (Not every process captured at start-up by pid: in one loaded
    # full-suite run one of them, which was not recorded, was gone afterwards
    # while runstack kept running; passing alone each time. Celery's prefork
    # pool may replace its own processes, so its pids are not the stack's.)
    assert all(c.is_running() for c in main)
    assert any(c.children() for c in main)
    url = f"http://127.0.0.1:{port}/models/"
    assert urllib.request.urlopen(url, timeout=5).status == 200
    proc.terminate()
    assert proc.wait(60) == 0
    _all_gone(children)


def test_a_killed_runstack_takes_its_children_with_it(site: dict[str, str], tmp_path: Path) -> None:
    port, log = stack.free_port(), tmp_path / "runstack.log"
    proc = _runstack(site, port, log)
    children = _children_once_up(proc, port, log)
    proc.kill()  # no handler runs: the children are told by the kernel
    proc.wait(10)
    _all_gone(children)


def test_a_child_that_cannot_start_fails_the_command(site: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        out = subprocess.run(
            [sys.executable, str(stack.ROOT / "manage.py"), "runstack", f"127.0.0.1:{port}"],
            env=site,
            cwd=stack.ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    # Before: "web exited with 1; stopping", then exit status 0 (make said nothing).
    assert out.returncode != 0, out.stdout + out.stderr
    assert "web exited with status" in out.stderr
