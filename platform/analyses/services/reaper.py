"""The reaper: no job stays ``pending`` or ``running`` forever.

It runs in every worker (at start, then every ``REAPER_INTERVAL_S``, from
:func:`start_reaper`) and on demand (``manage.py reap``). Every change is a
conditional update on the row as it was read, so several reapers and the
workers themselves can race without running one job twice.

- A ``running`` job whose worker is gone (:func:`.running.is_abandoned`:
  heartbeat older than ``STALE_RUNNING_S``, or its process died on this
  host) is queued again once, with the reason shown to its owner; if its
  worker had already died once it is ``failed`` (``worker_lost``).
- Once an hour, files no submission holds (a web process killed mid-upload
  leaves them) are removed (:func:`.storage.sweep_orphans`).
- A ``pending`` job that was never queued (the broker was down at upload) is
  queued; one whose message went out more than ``STALE_PENDING_S`` ago is
  queued again (a message can be lost; the duplicate is dropped).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import DatabaseError, connection
from django.db.models import Q
from django.utils import timezone

from analyses.config import trusttrace_settings
from analyses.models import Status, Submission
from analyses.services import queue
from analyses.services.errors import QueueUnavailable
from analyses.services.running import (
    WORKER_LOST_CODE,
    WORKER_LOST_REASON,
    is_abandoned,
)
from analyses.services.storage import drop_partial_files, sweep_orphans

logger = logging.getLogger(__name__)

WORKER_STOPPED_REASON = (
    "The worker analysing this file stopped before it finished (it was restarted or ran "
    "out of memory). The analysis was queued again and will start over."
)
# A row committed a moment ago may not have had its message sent yet.
UNQUEUED_GRACE_S = 10.0
# How often a reaper looks for files no submission holds (storage.sweep_orphans).
SWEEP_INTERVAL_S = 3600.0
_STOP = threading.Event()


@dataclass
class Reaped:
    """What one pass did (ids as strings)."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    broker_down: bool = False


def is_stale(sub: Submission, now: datetime | None = None) -> bool:
    """Whether an unfinished job is stuck: ``running`` without its worker, or
    ``pending`` never queued or queued longer ago than ``STALE_PENDING_S``."""
    now = now or timezone.now()
    if sub.status == Status.RUNNING:
        return is_abandoned(sub, now)
    if sub.status == Status.PENDING:
        if sub.heartbeat is None:
            return (now - sub.created).total_seconds() > UNQUEUED_GRACE_S
        stale_s = trusttrace_settings().stale_pending_s
        return (now - sub.heartbeat).total_seconds() > stale_s
    return False


def reap(now: datetime | None = None) -> Reaped:
    """One pass over the unfinished jobs (see the module docstring)."""
    now = now or timezone.now()
    out = Reaped()
    # Running rows are all read (few: one per worker process) because a dead
    # process on this host is stale whatever its heartbeat says.
    for sub in Submission.objects.filter(status=Status.RUNNING):
        if not is_abandoned(sub, now):
            continue
        claimed = Submission.objects.filter(
            pk=sub.pk, status=Status.RUNNING, attempts=sub.attempts, heartbeat=sub.heartbeat
        )
        if sub.reason_code == WORKER_LOST_CODE:
            if claimed.update(
                status=Status.FAILED,
                reason=WORKER_LOST_REASON,
                verdict="",
                score=None,
                stage="",
                percent=0,
                finished=now,
            ):
                logger.error("submission %s: worker lost twice; failed by the reaper", sub.pk)
                drop_partial_files(sub.pk)
                out.failed.append(str(sub.pk))
            continue
        if claimed.update(
            status=Status.PENDING,
            stage="",
            percent=0,
            heartbeat=None,
            reason=WORKER_STOPPED_REASON,
            reason_code=WORKER_LOST_CODE,
        ):
            logger.warning("submission %s: its worker is gone; queued again", sub.pk)
            out.requeued.append(str(sub.pk))
    grace = now - timedelta(seconds=UNQUEUED_GRACE_S)
    stale_pending = now - timedelta(seconds=trusttrace_settings().stale_pending_s)
    pending = Submission.objects.filter(status=Status.PENDING).filter(
        Q(heartbeat__isnull=True, created__lt=grace) | Q(heartbeat__lt=stale_pending)
    )
    due = [*out.requeued]  # queued again at once, whatever their age
    due += [str(pk) for pk in pending.order_by("created").values_list("pk", flat=True)]
    for sub_id in dict.fromkeys(due):
        try:
            queue.send(sub_id)
        except QueueUnavailable:
            out.broker_down = True
            break  # the next pass tries again
        out.queued.append(sub_id)
    if out.queued or out.failed or out.requeued:
        logger.info(
            "reaper: %d queued, %d re-queued after their worker died, %d failed",
            len(out.queued),
            len(out.requeued),
            len(out.failed),
        )
    return out


def start_reaper(interval_s: float | None = None) -> threading.Thread:
    """Run :func:`reap` now and every ``REAPER_INTERVAL_S`` in a daemon thread
    (started by the worker's ``worker_ready`` signal)."""
    interval = interval_s or trusttrace_settings().reaper_interval_s
    _STOP.clear()

    def loop() -> None:
        # First an hour in: a worker started against a database still being
        # restored does not judge the files at once.
        swept = time.monotonic()
        while True:
            try:
                reap()
                if time.monotonic() - swept >= SWEEP_INTERVAL_S:
                    swept = time.monotonic()
                    sweep_orphans()
            except DatabaseError:
                logger.exception("reaper pass failed; trying again in %.0f s", interval)
            except OSError:
                logger.exception("sweeping files no submission holds failed")
            finally:
                connection.close()
            _STOP.wait(interval)
            if _STOP.is_set():
                return

    thread = threading.Thread(target=loop, name="trusttrace-reaper", daemon=True)
    thread.start()
    return thread


def stop_reaper() -> None:
    """Stop the reaper thread after its current pass (worker shutdown)."""
    _STOP.set()
