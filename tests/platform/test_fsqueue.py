"""The embedded broker never shows a worker a message that is still being
written (trusttrace.fsqueue), and the site uses it for ``filesystem://``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from trusttrace import fsqueue


def _connection(folder: Path) -> Connection:
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder)}
    return Connection("filesystem://", transport=fsqueue.Transport, transport_options=options)


def test_a_message_appears_in_the_queue_only_once_it_is_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen_while_writing: list[list[str]] = []
    real_replace = Path.replace

    def replace(self: Path, target: Any) -> Path:
        # The moment before the rename: what a polling worker would find.
        seen_while_writing.append(sorted(os.listdir(tmp_path)))
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", replace)
    with _connection(tmp_path) as conn:
        channel = conn.default_channel
        channel._put("jobs", {"body": "x" * 100_000})
        # Before (kombu's writer): the file had its final name while it was written.
        assert len(seen_while_writing) == 1
        waiting = seen_while_writing[0]
        assert len(waiting) == 1 and waiting[0].startswith(".") and waiting[0].endswith(".part")
        # Nothing to claim yet at that moment: the reader skips the partial name.
        names = sorted(os.listdir(tmp_path))
        assert len(names) == 1 and names[0].endswith(".jobs.msg")
        assert channel._get("jobs") == {"body": "x" * 100_000}
        assert os.listdir(tmp_path) == []


def test_a_failed_write_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Path, target: Any) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "replace", refuse)
    with _connection(tmp_path) as conn, pytest.raises(Exception, match="Cannot add a message"):
        conn.default_channel._put("jobs", {"body": "x"})
    assert os.listdir(tmp_path) == []


_TRANSPORT = """
import django
django.setup()
from trusttrace.celery import app
with app.connection_for_write() as conn:
    print(type(conn.transport).__module__, type(conn.transport).__name__)
"""


@pytest.mark.parametrize(
    ("broker", "expected"),
    [
        (None, "trusttrace.fsqueue Transport"),
        ("redis://127.0.0.1:1/0", "kombu.transport.redis Transport"),
    ],
)
def test_the_site_uses_it_for_the_embedded_broker_only(
    tmp_path: Path, broker: str | None, expected: str
) -> None:
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "trusttrace.settings.local",
        "TRUSTTRACE_VAR_DIR": str(tmp_path / "var"),
        "PYTHONPATH": os.pathsep.join([str(root / "platform"), str(root)]),
    }
    env.pop("CELERY_BROKER_URL", None)
    if broker:
        env["CELERY_BROKER_URL"] = broker
    out = subprocess.run(
        [sys.executable, "-c", _TRANSPORT],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == expected
