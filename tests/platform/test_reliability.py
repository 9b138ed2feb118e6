"""Jobs that never finish (issue 17): the reaper, time limits, the broker
down at upload, duplicate messages and stuck jobs re-run by moderators.

The service is called directly here; tests/platform/test_worker_recovery.py
does the same against real worker processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from kombu.exceptions import OperationalError

from analyses import services, tasks
from analyses.models import Status, Submission
from tests.platform.conftest import upload

ROOT = Path(__file__).resolve().parents[2]


class Outbox:
    """Stands in for the broker: records messages, or refuses them while down."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.down = False

    def apply_async(self, args: tuple[str, ...], **kwargs: Any) -> None:
        if self.down:
            raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        self.sent.append(args[0])


@pytest.fixture
def outbox(monkeypatch: pytest.MonkeyPatch) -> Outbox:
    box = Outbox()
    monkeypatch.setattr(tasks.analyze_submission, "apply_async", box.apply_async)
    return box


def _pending(owner: Any, media_dir: Path) -> Submission:
    """A saved submission whose message was never sent (as after a broker outage)."""
    sub = services.create_submission(owner, upload(media_dir / "face.png"))
    Submission.objects.filter(pk=sub.pk).update(heartbeat=None)
    sub.refresh_from_db()
    return sub


def _age(sub: Submission, **fields: Any) -> Submission:
    Submission.objects.filter(pk=sub.pk).update(**fields)
    sub.refresh_from_db()
    return sub


def _ago(seconds: float) -> Any:
    return timezone.now() - timedelta(seconds=seconds)


# --- The broker down at upload -------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_upload_while_the_broker_is_down_is_503_keeps_the_file_and_is_queued_later(
    site: Path, users, clients, media_dir: Path, outbox: Outbox
) -> None:
    outbox.down = True
    with (media_dir / "face.png").open("rb") as fh:
        response = clients["submitter"].post(reverse("analyses:submit"), {"file": fh})
    # Before: a 500, the row left pending and its file deleted.
    assert response.status_code == 503
    assert "queue is unavailable" in response.content.decode()
    sub = Submission.objects.get()
    assert sub.status == Status.PENDING and Path(sub.file.path).is_file()
    assert sub.heartbeat is None and sub.reason_code == "queue_unavailable"
    progress = clients["submitter"].get(reverse("analyses:progress", args=[sub.pk])).json()
    assert "queued automatically" in progress["reason"]
    # The result page says so too (it said "Queued" only).
    page = clients["submitter"].get(reverse("analyses:detail", args=[sub.pk])).content.decode()
    assert f'<p class="muted" id="wait-reason">{escape(sub.reason)}</p>' in page

    _age(sub, created=_ago(60))
    assert services.reap().broker_down  # still down: kept for the next pass
    outbox.down = False
    assert services.reap().queued == [str(sub.pk)]
    sub.refresh_from_db()
    assert outbox.sent == [str(sub.pk)] and sub.heartbeat is not None
    assert sub.reason == "" and sub.reason_code == "" and sub.status == Status.PENDING


@pytest.mark.django_db(transaction=True)
def test_api_upload_while_the_broker_is_down_is_503_with_the_saved_id(
    site: Path, users, media_dir: Path, outbox: Outbox
) -> None:
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(users["submitter"])
    outbox.down = True
    with (media_dir / "face.png").open("rb") as fh:
        response = api.post("/api/submissions/", {"file": fh}, format="multipart")
    assert response.status_code == 503, response.content
    body = response.json()
    assert body["code"] == "queue_unavailable"
    sub = Submission.objects.get(pk=body["id"])
    assert sub.status == Status.PENDING and Path(sub.file.path).is_file()


@pytest.mark.django_db(transaction=True)
def test_rerun_while_the_broker_is_down_is_kept_pending_for_the_reaper(
    site: Path, users, clients, finished, outbox: Outbox
) -> None:
    sub = finished(users["submitter"])
    outbox.down = True
    response = clients["moderator"].post(reverse("moderation:rerun", args=[sub.pk]), follow=True)
    assert response.status_code == 200 and "queue is unavailable" in response.content.decode()
    sub.refresh_from_db()
    assert sub.status == Status.PENDING and sub.heartbeat is None
    assert Path(sub.file.path).is_file()
    outbox.down = False
    _age(sub, created=_ago(60))
    assert services.reap().queued == [str(sub.pk)]


# --- The reaper -----------------------------------------------------------------


@pytest.mark.django_db
def test_reaper_requeues_a_job_whose_worker_died_then_fails_it_the_second_time(
    site: Path, users, media_dir: Path, outbox: Outbox
) -> None:
    sub = _pending(users["submitter"], media_dir)
    stale = services.running.trusttrace_settings().stale_running_s
    _age(
        sub,
        status=Status.RUNNING,
        stage="detect",
        percent=39,
        heartbeat=_ago(stale + 1),
        worker="gone-host:4242",
        attempts=1,
        created=_ago(3600),
    )
    out = services.reap()
    # Before: nothing looked at it; it stayed running at 39% forever.
    assert out.requeued == [str(sub.pk)] and out.queued == [str(sub.pk)]
    sub.refresh_from_db()
    assert sub.status == Status.PENDING and sub.reason == services.WORKER_STOPPED_REASON
    assert sub.reason_code == services.WORKER_LOST_CODE and outbox.sent == [str(sub.pk)]

    # The next worker claims it and dies too: the second loss is final, and
    # the files the two runs began are removed (before: kept for good).
    _age(
        sub,
        status=Status.RUNNING,
        heartbeat=_ago(stale + 1),
        attempts=2,
        stage="detect",
        percent=40,
    )
    for attempt in (1, 2):
        begun = services.artifact_dir(sub) / f"run-{attempt}"
        begun.mkdir(parents=True)
        (begun / "face-p0-f0.png").write_bytes(b"partial")
    out = services.reap()
    sub.refresh_from_db()
    assert out.failed == [str(sub.pk)] and sub.status == Status.FAILED
    assert sub.reason == services.WORKER_LOST_REASON and sub.score is None
    assert (sub.stage, sub.percent) == ("", 0)
    assert not services.artifact_dir(sub).exists()


@pytest.mark.django_db
def test_reaper_requeues_a_running_job_of_a_dead_process_on_this_host_at_once(
    site: Path, users, media_dir: Path, outbox: Outbox
) -> None:
    sub = _pending(users["submitter"], media_dir)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = services.running._LOCAL
    _age(sub, status=Status.RUNNING, heartbeat=timezone.now(), worker=f"{here}:{dead.pid}:123")
    assert services.reap().requeued == [str(sub.pk)]
    # A job claimed by older code names the host and PID only.
    old = _pending(users["submitter"], media_dir)
    host = socket.gethostname()
    _age(old, status=Status.RUNNING, heartbeat=timezone.now(), worker=f"{host}:{dead.pid}")
    assert services.reap().requeued == [str(old.pk)]


@pytest.mark.django_db
def test_a_worker_is_told_apart_by_pid_namespace_and_process_start(
    site: Path, users, media_dir: Path
) -> None:
    running = services.running
    sub = _pending(users["submitter"], media_dir)
    _age(sub, status=Status.RUNNING, heartbeat=timezone.now(), worker=running.worker_id())
    assert not running.is_abandoned(sub)
    # The PID now belongs to a later process (a restarted container's child
    # often gets its predecessor's PID): before, the job waited for its
    # heartbeat to go stale.
    pid = os.getpid()
    sub.worker = f"{running._LOCAL}:{pid}:1"
    assert running.is_abandoned(sub)
    # The same host name in another PID namespace (containers sharing the
    # host's network): its PIDs say nothing here, so only the heartbeat counts.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sub.worker = f"{socket.gethostname()}/1:{dead.pid}:5"
    assert not running.is_abandoned(sub)


@pytest.mark.django_db
def test_a_live_process_on_this_host_keeps_its_job_through_a_silent_heartbeat(
    site: Path, users, media_dir: Path, outbox: Outbox, settings
) -> None:
    """A suspended laptop or a database locked for minutes silences every
    heartbeat while the process still runs the job. Before, the reaper gave
    the job to another run and the first run's outcome was dropped at its
    end. Now only a run past the hard time limit is taken from a live
    process (the limit ends any run)."""
    running = services.running
    stale = running.trusttrace_settings().stale_running_s
    sub = _pending(users["submitter"], media_dir)
    _age(
        sub,
        status=Status.RUNNING,
        heartbeat=_ago(stale * 10),
        started=_ago(stale * 10),
        worker=running.worker_id(),  # this process: alive
        attempts=1,
    )
    assert not running.is_abandoned(sub)
    out = services.reap()
    assert out.requeued == out.failed == out.queued == [] and outbox.sent == []
    sub.refresh_from_db()
    assert sub.status == Status.RUNNING and sub.attempts == 1
    # Past the hard limit (and the stale period) nothing can still be running it.
    limit = settings.CELERY_TASK_TIME_LIMIT
    _age(sub, started=_ago(limit + stale + 5))
    assert running.is_abandoned(sub)
    assert services.reap().requeued == [str(sub.pk)]
    # A fresh heartbeat keeps even a long run (the limit is the worker's to enforce).
    again = _pending(users["submitter"], media_dir)
    _age(
        again,
        status=Status.RUNNING,
        heartbeat=timezone.now(),
        started=_ago(limit * 2),
        worker=running.worker_id(),
    )
    assert not running.is_abandoned(again)
    # Another host's worker is judged by its heartbeat alone, as before.
    _age(again, heartbeat=_ago(stale + 1), started=timezone.now(), worker="other-host/7:99:1")
    assert running.is_abandoned(again)


@pytest.mark.django_db
def test_reaper_leaves_live_and_recently_queued_jobs_alone(
    site: Path, users, media_dir: Path, outbox: Outbox
) -> None:
    running = _pending(users["submitter"], media_dir)
    _age(
        running,
        status=Status.RUNNING,
        heartbeat=timezone.now(),
        worker=services.running.worker_id(),
        created=_ago(3600),
    )
    queued = _pending(users["submitter"], media_dir)
    _age(queued, heartbeat=_ago(5), created=_ago(3600))
    just_saved = _pending(users["submitter"], media_dir)  # its message is on its way
    out = services.reap()
    assert out.requeued == out.failed == out.queued == [] and outbox.sent == []
    running.refresh_from_db()
    assert running.status == Status.RUNNING
    for before in (queued, just_saved):
        after = type(before).objects.get(pk=before.pk)  # from the database, after the reap
        assert (after.status, after.heartbeat, after.reason, after.attempts) == (
            Status.PENDING,
            before.heartbeat,
            before.reason,
            before.attempts,
        )


@pytest.mark.django_db
def test_reaper_sends_a_pending_message_again_after_the_stale_period(
    site: Path, users, media_dir: Path, outbox: Outbox
) -> None:
    sub = _pending(users["submitter"], media_dir)
    stale = services.running.trusttrace_settings().stale_pending_s
    _age(sub, heartbeat=_ago(stale + 1), created=_ago(stale + 60))
    # A message lost with its worker (the embedded transport on SIGKILL).
    assert services.reap().queued == [str(sub.pk)] and outbox.sent == [str(sub.pk)]


@pytest.mark.django_db
def test_reap_command_reports_what_it_did(
    site: Path, users, media_dir: Path, outbox: Outbox
) -> None:
    from io import StringIO

    from django.core.management import call_command

    _age(_pending(users["submitter"], media_dir), created=_ago(60))
    out = StringIO()
    call_command("reap", stdout=out)
    assert "queued 1," in out.getvalue()


# --- Duplicate and redelivered messages -------------------------------------------


@pytest.mark.django_db
def test_duplicate_message_for_a_job_running_elsewhere_is_dropped(
    site: Path, users, media_dir: Path
) -> None:
    sub = _pending(users["submitter"], media_dir)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = services.running._process_start(alive.pid)
        _age(
            sub,
            status=Status.RUNNING,
            heartbeat=timezone.now(),
            attempts=1,
            worker=f"{services.running._LOCAL}:{alive.pid}:{start}",
        )
        services.run_submission(sub.pk)
    finally:
        alive.kill()
        alive.wait()
    sub.refresh_from_db()
    # Before: taken for a redelivery after a worker death and run a second time.
    assert sub.status == Status.RUNNING and sub.attempts == 1 and sub.reason_code == ""


@pytest.mark.django_db
def test_message_redelivered_after_its_worker_process_died_runs_once_more(
    site: Path, users, media_dir: Path
) -> None:
    sub = _pending(users["submitter"], media_dir)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _age(
        sub,
        status=Status.RUNNING,
        heartbeat=timezone.now(),
        attempts=1,
        worker=f"{services.running._LOCAL}:{dead.pid}:1",
    )
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert sub.status == Status.DONE and sub.attempts == 2, sub.reason
    assert sub.worker == services.running.worker_id()


# --- Time limits ------------------------------------------------------------------


@pytest.mark.django_db
def test_soft_time_limit_fails_the_job_with_a_time_limit_reason(
    site: Path, users, media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = _pending(users["submitter"], media_dir)

    class Slow:
        def run(self, *args: Any, **kwargs: Any) -> Any:
            raise SoftTimeLimitExceeded()

    monkeypatch.setattr(services.running, "_explainer", Slow)
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    # Before: "internal error (SoftTimeLimitExceeded)".
    assert sub.status == Status.FAILED and sub.reason_code == services.TIMED_OUT_CODE
    assert "time limit" in sub.reason and "moderator can run it again" in sub.reason


@pytest.mark.django_db
def test_a_soft_time_limit_while_explaining_keeps_the_verdict(
    site: Path, users, media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from explain import Explainer

    sub = _pending(users["submitter"], media_dir)

    def time_up(*_: Any) -> None:
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(Explainer, "_attention", time_up)
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    # Before: failed, timed_out, the verdict already made thrown away.
    assert sub.status == Status.DONE and sub.score is not None, sub.reason
    assert "reached its time limit while making explanations" in sub.reason
    assert "attention maps" in sub.reason and "could not be made" not in sub.reason
    assert sub.result["explanations_missing"]["attention"] == "TimedOut"
    assert sub.artifacts.filter(kind="face").exists()
    assert not sub.artifacts.filter(kind="attention").exists()


@pytest.mark.django_db
def test_a_time_limit_after_the_result_is_stored_keeps_it_and_its_files(
    site: Path, users, media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit arrives while earlier runs' folders are removed, after the
    result was stored: the job stays done. It was failed, and this run's
    files removed under its artifact rows."""
    sub = _pending(users["submitter"], media_dir)

    def out_of_time(out_dir: Path) -> None:
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(services.running, "_drop_other_runs", out_of_time)
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert sub.status == Status.DONE, sub.reason
    files = [Path(a.file.path) for a in sub.artifacts.all()]
    assert files and all(f.is_file() for f in files)


@pytest.mark.django_db
def test_hard_time_limit_marks_the_running_job_failed(site: Path, users, media_dir: Path) -> None:
    sub = _pending(users["submitter"], media_dir)
    here = services.running._LOCAL
    _age(
        sub,
        status=Status.RUNNING,
        heartbeat=timezone.now(),
        started=_ago(1900),
        worker=f"{here}:1:1",
    )
    # What the worker parent calls when it kills the child at the hard limit.
    begun = services.artifact_dir(sub) / "run-1"
    begun.mkdir(parents=True)
    (begun / "face-p0-f0.png").write_bytes(b"partial")
    tasks.analyze_submission.on_failure(TimeLimitExceeded(1900), "task-id", [str(sub.pk)], {}, None)
    sub.refresh_from_db()
    # Before: the message was acknowledged and the job stayed running.
    assert sub.status == Status.FAILED and sub.reason_code == services.TIMED_OUT_CODE
    assert not services.artifact_dir(sub).exists()  # the killed run's files
    # A job another host's worker has claimed meanwhile is not this kill's.
    other = _pending(users["submitter"], media_dir)
    _age(other, status=Status.RUNNING, heartbeat=timezone.now(), worker="elsewhere:7")
    tasks.analyze_submission.on_failure(TimeLimitExceeded(1900), "t2", [str(other.pk)], {}, None)
    other.refresh_from_db()
    assert other.status == Status.RUNNING
    # So is one a container with the same host name claimed (another PID namespace).
    other.worker = f"{socket.gethostname()}/1:7:9"
    other.save(update_fields=["worker"])
    tasks.analyze_submission.on_failure(TimeLimitExceeded(1900), "t3", [str(other.pk)], {}, None)
    other.refresh_from_db()
    assert other.status == Status.RUNNING
    # And a run of this host that began a minute ago (a re-run in another
    # child took the job over from the stuck one): not the run killed.
    _age(other, worker=f"{here}:1:2", started=_ago(60), attempts=2)
    tasks.analyze_submission.on_failure(TimeLimitExceeded(1900), "t4", [str(other.pk)], {}, None)
    other.refresh_from_db()
    assert other.status == Status.RUNNING


def test_the_old_task_name_runs_the_same_job_until_its_messages_have_drained(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from trusttrace.celery import app

    # A message queued before the rename names the task by its old spelling.
    new, old = app.tasks["analyses.analyze_submission"], app.tasks["analyses.analyse_submission"]
    assert old is not new and old.run is new.run
    # Under either name a hard time limit marks the job failed.
    assert isinstance(old, tasks.AnalysisTask) and old.ignore_result
    ran: list[str] = []
    monkeypatch.setattr(services, "run_submission", ran.append)
    old("queued-before-the-rename")
    new("queued-after-it")
    assert ran == ["queued-before-the-rename", "queued-after-it"]
    # What is sent now goes out under the new name only.
    assert tasks.analyze_submission.name == "analyses.analyze_submission"


def test_soft_limit_not_below_the_hard_limit_refuses_to_start() -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "trusttrace.settings.test",
        "TRUSTTRACE_TASK_SOFT_LIMIT_S": "2000",
        "TRUSTTRACE_TASK_LIMIT_S": "1900",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
    }
    code = "import django; django.setup(); from trusttrace.celery import app; print('started')"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Before: it started, and the worker then raised on every message.
    assert out.returncode != 0 and "started" not in out.stdout
    assert "TRUSTTRACE_TASK_SOFT_LIMIT_S (2000) must be above 0 and below" in out.stderr


# --- Moderators re-run stuck jobs ----------------------------------------------------


@pytest.mark.django_db
def test_moderator_can_rerun_a_stuck_running_job_but_not_a_live_one(
    site: Path,
    users,
    clients,
    media_dir: Path,
    outbox: Outbox,
    django_capture_on_commit_callbacks: Any,
) -> None:
    sub = _pending(users["submitter"], media_dir)
    _age(
        sub,
        status=Status.RUNNING,
        heartbeat=timezone.now(),
        worker=services.running.worker_id(),
        percent=39,
    )
    url = reverse("moderation:rerun", args=[sub.pk])
    clients["moderator"].post(url)
    sub.refresh_from_db()
    assert sub.status == Status.RUNNING and sub.percent == 39  # alive: refused

    stale = services.running.trusttrace_settings().stale_running_s
    _age(sub, heartbeat=_ago(stale + 1))
    with django_capture_on_commit_callbacks(execute=True):
        clients["moderator"].post(url)
    sub.refresh_from_db()
    # Before: "This submission is running; only finished ... can be run again".
    assert sub.status == Status.PENDING and sub.percent == 0
    assert outbox.sent == [str(sub.pk)]


def test_files_a_killed_upload_left_are_swept_and_held_ones_kept(
    site: Path, users: dict[str, Any], finished: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A web process killed (SIGKILL, out of memory) between staging an upload
    and saving its row runs no clean-up: its copy stayed in staging/ or
    uploads/ for good. The reaper's hourly sweep removes what no row holds,
    once old enough that no upload in progress can own it."""
    import time
    import uuid

    from analyses.services import reaper, storage

    sub = finished(users["submitter"])
    held, folder = Path(sub.file.path), storage.artifact_dir(sub)
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()

    def made(path: Path, age_s: float, folder: bool = False) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if folder else path.write_bytes(b"x")
        os.utime(path, (now - age_s, now - age_s))
        return path

    day = storage.ORPHAN_MIN_AGE_S
    old_staged = made(site / "staging" / "a1", storage.STAGED_MAX_AGE_S + 60)
    new_staged = made(site / "staging" / "a2", 60)  # an upload being probed now
    orphan = made(site / "uploads" / "b1.mp4", day + 60)
    young = made(site / "uploads" / "b2.mp4", 600)  # its row is being saved
    os.utime(held, (now - day - 60, now - day - 60))
    os.utime(folder, (now - day - 60, now - day - 60))
    lost = made(site / "artifacts" / str(uuid.uuid4()), day + 60, folder=True)
    foreign = made(site / "artifacts" / "not-a-submission", day + 60, folder=True)

    removed = storage.sweep_orphans(now)
    assert sorted(removed) == sorted(["staging/a1", "uploads/b1.mp4", f"artifacts/{lost.name}"])
    assert not old_staged.exists() and not orphan.exists() and not lost.exists()
    assert new_staged.exists() and young.exists() and held.exists() and folder.exists()
    assert foreign.exists()
    assert storage.sweep_orphans(now) == []

    # Too many unowned to be orphans: the database is not the files' own (a
    # restore in progress, a wrong DATABASE_URL), and nothing goes.
    strays = [made(site / "uploads" / f"c{i}.mp4", day + 60) for i in range(8)]
    assert storage.sweep_orphans(now) == []
    assert all(p.exists() for p in strays)

    # The reaper thread sweeps an interval after it starts, not at once.
    swept: list[float] = []
    monkeypatch.setattr(reaper, "reap", lambda: None)  # the test's database is not shared
    monkeypatch.setattr(reaper, "sweep_orphans", lambda: swept.append(1.0) or [])
    for interval, expected in ((3600.0, range(0, 1)), (0.2, range(1, 4))):
        monkeypatch.setattr(reaper, "SWEEP_INTERVAL_S", interval)
        swept.clear()
        thread = reaper.start_reaper(0.05)
        time.sleep(0.5)
        reaper.stop_reaper()
        thread.join(5)
        assert len(swept) in expected, (interval, swept)
