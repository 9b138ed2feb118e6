"""``python manage.py runstack``: the web server and a Celery worker together.

Both run as child processes; Ctrl-C (or SIGTERM, or closing the terminal:
SIGHUP) stops both, and if either exits the other is stopped too and the
command fails with its exit status. The children are also told to stop
(SIGTERM, Linux) should this command die without stopping them (SIGKILL, out
of memory). With the default embedded broker (kombu's filesystem transport
under var/queue) nothing else needs to be running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 15.0
POLL_S = 0.5


class Command(BaseCommand):
    help = "Run the development web server and a Celery worker; Ctrl-C stops both."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("addrport", nargs="?", default="127.0.0.1:8000")
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="worker processes (default: TRUSTTRACE_WORKER_CONCURRENCY, 1)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from trusttrace.celery import ensure_queue_folders

        ensure_queue_folders()
        root = settings.BASE_DIR
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(root / "platform"), str(root), os.environ.get("PYTHONPATH", "")]
            ),
        }
        python = sys.executable
        commands = {
            "worker": [
                python,
                "-m",
                "celery",
                "-A",
                "trusttrace",
                "worker",
                "--loglevel=INFO",
                f"--concurrency={options['concurrency'] or settings.CELERY_WORKER_CONCURRENCY}",
                "-Q",
                settings.CELERY_TASK_DEFAULT_QUEUE,
            ],
            "web": [
                python,
                str(root / "manage.py"),
                "runserver",
                "--noreload",
                options["addrport"],
            ],
        }
        self.stdout.write(f"broker: {settings.CELERY_BROKER_URL.split('@')[-1]}")
        # Each child leads its own process group, so that a worker stuck past
        # STOP_TIMEOUT_S is killed with its pool children (no orphans left
        # running a job). Ctrl-C reaches this command only; it stops both.
        parent = os.getpid()
        procs = {
            name: subprocess.Popen(  # noqa: S603
                cmd,
                env=env,
                cwd=root,
                start_new_session=True,
                preexec_fn=lambda: _die_with_parent(parent),
            )
            for name, cmd in commands.items()
        }
        stopping = False
        failed: tuple[str, int] | None = None
        # Explicit for SIGINT too: a shell starts background jobs with SIGINT
        # ignored. SIGHUP only where it is not ignored: under nohup, logging
        # out must not stop the site.
        handled = [
            signum
            for signum in STOP_SIGNALS
            if signum != signal.SIGHUP or signal.getsignal(signum) is not signal.SIG_IGN
        ]

        def on_term(signum: int, frame: FrameType | None) -> None:
            # A second signal must not cut the stop short (the worker's
            # SIGKILL after STOP_TIMEOUT_S would never come).
            for other in handled:
                signal.signal(other, signal.SIG_IGN)
            raise KeyboardInterrupt

        try:
            for signum in handled:
                signal.signal(signum, on_term)
            while failed is None:
                for name, proc in procs.items():
                    if proc.poll() is not None:
                        self.stderr.write(f"{name} exited with {proc.returncode}; stopping")
                        failed = (name, proc.returncode)
                        break
                else:
                    time.sleep(POLL_S)
        except KeyboardInterrupt:
            stopping = True
            self.stdout.write("stopping web and worker ...")
        finally:
            for signum in handled:
                signal.signal(signum, signal.SIG_IGN)
            _stop(procs)
            if stopping:
                self.stdout.write("stopped")
        if failed is not None:
            name, code = failed
            raise CommandError(
                f"{name} exited with status {code}; the other was stopped",
                returncode=code if code > 0 else 1,
            )


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# prctl(2) option: the signal a child gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Any:
    """libc's prctl, loaded here (not in the forked child), or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()


def _die_with_parent(parent: int) -> None:
    """In a child, before exec: SIGTERM it when this command (``parent``)
    dies. Covers the deaths no handler sees (SIGKILL, out of memory); a
    parent already gone before the request was made means exiting now."""
    if _PRCTL is None:
        return
    _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for name, proc in procs.items():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in time; killing it and its children", name)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
