"""Running an analysis: the Celery task's body. The only place the site meets
the detection core (``ensemble`` and ``explain``, imported lazily, in the
worker child only)."""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from celery.exceptions import SoftTimeLimitExceeded
from django.db import DatabaseError, connection, transaction
from django.db.models import F
from django.utils import timezone

from analyses.config import analysis_config, analysis_registry, trusttrace_settings
from analyses.models import Artifact, ArtifactKind, Status, Submission
from analyses.services.errors import Refusal
from analyses.services.storage import attempt_dir, drop_partial_files, media_root
from ensemble.errors import MediaReadFaultError, TrusttraceError

if TYPE_CHECKING:
    # Loaded in the worker child on the first job, never by the web process.
    from ensemble.config import AnalysisConfig
    from ensemble.pipeline import Analyzer
    from ensemble.results import AnalysisResult
    from explain import Explainer

logger = logging.getLogger(__name__)

# Explanation index versions this site stores (explain/index.py writes the newest).
INDEX_VERSIONS = (1, 2)
INTERNAL_ERROR_REASON = (
    "The analysis stopped because of an internal error ({name}). This is our fault, "
    "not your file's; it was logged and a moderator can run it again."
)

_ANALYZERS: dict[tuple[AnalysisConfig, str, tuple[str | None, ...]], Analyzer] = {}


def _analyzer() -> Analyzer:
    """One loaded :class:`ensemble.pipeline.Analyzer` per worker process and
    configuration: models load on the first job, in the child process.

    They load again when what is installed changes (new weights exported or
    imported, ``calibrate_member``, ``calibrate_ensemble``): a running worker
    picks them up at its next job instead of scoring with what it loaded
    until someone restarts it."""
    from ensemble.pipeline import Analyzer
    from ensemble.runtime import release_memory
    from ensemble.weights import installed_stamp

    config = analysis_config()
    installed = installed_stamp(config.weights_dir, config.members)
    key = (config, trusttrace_settings().registry, installed)
    analyzer = _ANALYZERS.get(key)
    if analyzer is None:
        if _ANALYZERS:
            logger.info("settings or installed weights changed: loading the members again")
            # The old models go first: two sets of them need not fit in memory.
            _ANALYZERS.clear()
            _EXPLAINERS.clear()
            gc.collect()
            release_memory()
        analyzer = Analyzer(config, analysis_registry())
        try:
            analyzer.prepare()
        except BaseException:
            # Nothing is kept: the next job tries again (a moderator can re-run
            # this one once the install is fixed). What loaded is freed once
            # the error (whose traceback holds it) has been handled.
            del analyzer
            gc.collect()
            release_memory()
            raise
        _ANALYZERS[key] = analyzer
    return analyzer


MODELS_FAILED_CODE = "models_unavailable"
MODELS_FAILED_REASON = (
    "The detectors installed on this site could not be loaded ({why}). This is a fault of "
    "the site, not of your file; it was logged and a moderator can run the analysis again "
    "once the detectors are fixed."
)


def _brief(e: Exception) -> str:
    """Why the detectors did not load, in words that name no server path (the
    full error goes to the log)."""
    from ensemble.errors import (
        ConfigError,
        IncompatibleCheckpointError,
        MissingWeightsError,
        RegistryError,
        WeightsIntegrityError,
    )

    if isinstance(e, MissingWeightsError):
        return "installed weights are missing"
    if isinstance(e, WeightsIntegrityError):
        return "installed weights do not match their manifest's checksums"
    if isinstance(e, IncompatibleCheckpointError):
        return "installed weights do not fit their detector"
    if isinstance(e, RegistryError):
        return "a configured detector is unknown to this version of the site"
    if isinstance(e, ConfigError):
        return "the worker's detector settings are invalid"
    return "their manifest or calibration cannot be used"


class _ModelsFailedError(TrusttraceError):
    """The installed weights (or their calibration) cannot be loaded: the
    site's fault, so the job fails (and may be run again), with a reason that
    says so instead of an internal error."""


class _RejectedInput(Refusal):
    """Bad input found during the job (e.g. an unusable reference): final."""


STORED_FILE_CODE = "stored_file"
STORED_FILE_REASON = (
    "The uploaded {which} could not be read back from the site's storage as it was received "
    "({why}). This is a fault of the site's storage, not of your file; it was logged and a "
    "moderator can run the analysis again once the file is restored."
)


class _StoredFileError(TrusttraceError):
    """The stored upload (or its reference) is missing or no longer the file
    that was received: the site's fault, so the job fails (and may be run
    again) instead of rejecting the user's file."""


def _check_stored(sub: Submission) -> None:
    """The upload and its reference are on disk, with the size and sha256
    recorded when they were received; else :class:`_StoredFileError`."""
    from ensemble.media import file_sha256

    stored = [("file", sub.file, sub.sha256, sub.size_bytes)]
    if sub.reference_file:
        stored.append(
            ("reference", sub.reference_file, sub.reference_sha256, sub.reference_size_bytes)
        )
    for which, field, sha256, size in stored:
        why = _stored_fault(Path(field.path), sha256, size, file_sha256)
        if why is None:
            continue
        raise _StoredFileError(STORED_FILE_REASON.format(which=which, why=why))


def _stored_fault(path: Path, sha256: str, size: int, digest: Callable[[Path], str]) -> str | None:
    """Why the stored ``path`` is not the file received (``None``: it is)."""
    try:
        if not path.is_file():
            return "it is missing"
        actual = path.stat().st_size
        if size and actual != size:
            return f"it is {actual:,} bytes, not the {size:,} received"
        if sha256 and digest(path) != sha256:
            return "its content has changed since it was received"
    except OSError as e:  # a volume mounted with the wrong owner, a disk error
        return f"it cannot be read: {e.strerror or type(e).__name__}"
    return None


_EXPLAINERS: dict[int, Explainer] = {}


def _explainer() -> Explainer:
    """One ``explain.Explainer`` per worker process around :func:`_analyzer`."""
    from explain import ExplainConfig, Explainer

    analyzer = _analyzer()
    explainer = _EXPLAINERS.get(id(analyzer))
    if explainer is None:
        _EXPLAINERS.clear()
        # The job no longer being this run's stops the job. The soft time
        # limit stops it while the media is scored; once the verdict is
        # made, it ends the explanations and the verdict is stored (the
        # hard limit is TRUSTTRACE_TASK_LIMIT_S - SOFT_LIMIT_S later). Any
        # other failure while making one kind of explanation costs only
        # that kind (the index says which).
        explainer = _EXPLAINERS[id(analyzer)] = Explainer(
            analyzer,
            ExplainConfig(),
            interrupts=(Submission.DoesNotExist, _ClaimLost),
            deadlines=(SoftTimeLimitExceeded,),
        )
    return explainer


def _analyze(
    path: Path, out_dir: Path, reference: Path | None, progress: Callable[[str, float], None]
) -> tuple[AnalysisResult, dict[str, Any] | None]:
    """Run the analysis with its explanations.

    Returns the AnalysisResult and the explanation index (index.json as a
    dict) when there is one (only for a "done" result). An unusable
    reference is bad input: :class:`_RejectedInput` with its reason.
    """
    from ensemble.errors import ConfigError, RegistryError, WeightsError
    from explain import InvalidReferenceError

    try:
        explainer = _explainer()
    except (WeightsError, RegistryError, ConfigError) as e:
        raise _ModelsFailedError(MODELS_FAILED_REASON.format(why=_brief(e))) from e
    try:
        result, index = explainer.run(path, out_dir, reference=reference, progress=progress)
    except InvalidReferenceError as e:
        raise _RejectedInput(str(e), e.code) from e
    if index is None:
        return result, None
    # As index.json holds it (the explainer wrote it when the disk let it).
    return result, json.loads(json.dumps(index.to_dict()))


def _progress_writer(sub: Submission) -> Callable[[str, float], None]:
    """The analysis's progress callback for the claimed ``sub``: writes the
    stage and percent (at most every ``PROGRESS_INTERVAL_S``) while the job is
    still this run's. Once it is not (its owner deleted it, or a reaper or a
    moderator gave it to another run), the next report stops the analysis
    with :class:`Submission.DoesNotExist` or :class:`_ClaimLost` instead of
    working on for nothing until the time limit."""
    interval = trusttrace_settings().progress_interval_s
    last = [0.0, -1]
    sub_id, worker, attempts = sub.pk, sub.worker, sub.attempts

    def report(stage: str, fraction: float) -> None:
        percent = max(0, min(100, int(fraction * 100)))
        now = time.monotonic()
        if percent != last[1] and (now - last[0] >= interval or percent >= 100):
            last[0], last[1] = now, percent
            held = Submission.objects.filter(
                pk=sub_id, status=Status.RUNNING, worker=worker, attempts=attempts
            ).update(stage=stage[:64], percent=percent, heartbeat=timezone.now())
            if not held:
                if not Submission.objects.filter(pk=sub_id).exists():
                    raise Submission.DoesNotExist
                raise _ClaimLost

    return report


def series_from_result(result: dict[str, Any]) -> dict[str, Any]:
    """The chart data of index.json's ``series`` built from a result dict
    (used when no explanation index exists)."""
    persons: dict[int, list[dict[str, Any]]] = {}
    for row in result.get("frames", []):
        persons.setdefault(int(row["person"]), []).append(
            {
                "frame": row["frame"],
                "time": row["time"],
                "score": row["score"],
                "members": row["members"],
            }
        )
    return {
        "threshold": result.get("threshold"),
        "uncertain_band": result.get("uncertain_band"),
        "persons": [{"id": pid, "points": pts} for pid, pts in sorted(persons.items())],
    }


WORKER_LOST_CODE = "worker_lost"
WORKER_LOST_REASON = (
    "The analysis stopped twice because its worker process died (out of memory or over the "
    "time limit). This was logged; a moderator can run it again."
)
TIMED_OUT_CODE = "timed_out"
TIMED_OUT_REASON = (
    "The analysis took longer than the {limit:.0f}-second time limit and was stopped. This "
    "was logged; a moderator can run it again."
)
_HOST = socket.gethostname()


def _pid_namespace() -> str:
    """This process's PID namespace (its inode), or "" where there is none
    to read. Containers may share a host name (``network_mode: host``) but
    never a PID namespace: a PID means something only inside its own."""
    try:
        link = str(Path("/proc/self/ns/pid").readlink())
    except OSError:
        return ""
    return "".join(ch for ch in link if ch.isdigit())


def _process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, from
    ``/proc/PID/stat``), or "" where that cannot be read. A PID used again by
    a later process has another start."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Field 22; the command name (field 2) may hold spaces and ')', so count after its end.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else ""


# Where a PID can be checked: this host name and PID namespace.
_LOCAL = f"{_HOST}/{_pid_namespace()}"


_OWN_IDS: dict[int, str] = {}


def worker_id() -> str:
    """``host/pid-namespace:pid:start`` of this process, recorded on the job
    it claims: enough to tell, from another process of the same host and
    namespace, whether that very process still runs. Read once per process
    (a forked pool child has its own PID), so it never changes under a job."""
    pid = os.getpid()
    if pid not in _OWN_IDS:
        _OWN_IDS[pid] = f"{_LOCAL}:{pid}:{_process_start(pid)}"[:128]
    return _OWN_IDS[pid]


def _runs_here(worker: str) -> bool:
    """Whether ``worker`` (a job's worker id) names a process of this host
    and PID namespace. An id from older code (``host:pid``) names the host only."""
    parts = worker.split(":")
    if len(parts) == 2:
        return parts[0] == _HOST
    return len(parts) == 3 and parts[0] == _LOCAL


def _process_gone(worker: str) -> bool:
    """Whether the process ``worker`` names (one of :func:`_runs_here`) has
    exited: its PID is free, or now belongs to a process that started later."""
    parts = worker.split(":")
    if not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if not _pid_alive(pid):
        return True
    start = parts[2] if len(parts) == 3 else ""
    return bool(start) and _process_start(pid) not in ("", start)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_abandoned(sub: Submission, now: datetime | None = None) -> bool:
    """Whether the worker that claimed this ``running`` job is gone.

    On this host (and PID namespace) that is known for sure: its process no
    longer exists. While it does, a heartbeat older than ``STALE_RUNNING_S``
    is not enough (the machine was suspended, the database was locked for a
    while, the process was stopped): the job is still its own until it has
    run past the hard time limit, which ends any run (plus
    ``STALE_RUNNING_S``). Elsewhere only the heartbeat can tell: older than
    ``STALE_RUNNING_S``, the worker is taken for gone."""
    now = now or timezone.now()
    stale_s = trusttrace_settings().stale_running_s
    stale = sub.heartbeat is None or (now - sub.heartbeat).total_seconds() > stale_s
    if not _runs_here(sub.worker):
        return stale
    if _process_gone(sub.worker):
        return True
    return stale and _past_time_limit(sub, now, stale_s)


def _past_time_limit(sub: Submission, now: datetime, slack_s: float) -> bool:
    """Whether the job started longer ago than the hard time limit plus
    ``slack_s`` (a run cannot still be going; never started: yes)."""
    from django.conf import settings

    if sub.started is None:
        return True
    limit = float(settings.CELERY_TASK_TIME_LIMIT) + slack_s
    return (now - sub.started).total_seconds() > limit


def run_submission(submission_id: UUID | str) -> None:
    """Analyse one submission and store the outcome (the Celery task's body).

    A message for a submission still ``running`` is either a duplicate (its
    worker is alive: dropped) or a redelivery after that worker died
    (acks_late + reject_on_worker_lost, or the reaper): it is run once more,
    and failed the second time, so a file that kills the worker cannot loop
    forever. The claim is atomic, so two workers never run one job. A
    submission deleted during its analysis is left deleted and the files the
    job wrote are removed.
    """
    sub = Submission.objects.filter(pk=submission_id).first()
    if sub is None:
        logger.warning("submission %s vanished before its analysis", submission_id)
        return
    if sub.status not in (Status.PENDING, Status.RUNNING):
        logger.info("submission %s is %s; not analysing again", sub.pk, sub.status)
        return
    reason_code = sub.reason_code
    if sub.status == Status.RUNNING:
        if sub.worker != worker_id() and not is_abandoned(sub):
            logger.info(
                "submission %s is running in %s; duplicate message dropped", sub.pk, sub.worker
            )
            return
        if sub.reason_code == WORKER_LOST_CODE:
            logger.error("submission %s: worker died twice; marking it failed", sub.pk)
            try:
                _finish_without_result(sub, Status.FAILED, WORKER_LOST_REASON, WORKER_LOST_CODE)
            except (_ClaimLost, Submission.DoesNotExist):
                logger.info("submission %s changed meanwhile; left as it is", sub.pk)
            else:
                drop_partial_files(sub.pk)
            return
        logger.warning("submission %s redelivered after its worker died; once more", sub.pk)
        reason_code = WORKER_LOST_CODE
    now = timezone.now()
    claimed = Submission.objects.filter(
        pk=sub.pk, status=sub.status, attempts=sub.attempts, worker=sub.worker
    ).update(
        status=Status.RUNNING,
        stage="queued",
        percent=0,
        started=now,
        finished=None,
        attempts=F("attempts") + 1,
        reason_code=reason_code,
        heartbeat=now,
        worker=worker_id(),
    )
    if not claimed:
        logger.info("submission %s was claimed by another worker meanwhile", sub.pk)
        return
    sub.refresh_from_db()
    out_dir = attempt_dir(sub)
    stored = False
    try:
        with _heartbeat(sub.pk, sub.worker, sub.attempts):
            try:
                _check_stored(sub)
                reference = Path(sub.reference_file.path) if sub.reference_file else None
                result, index = _analyze(
                    Path(sub.file.path), out_dir, reference, _progress_writer(sub)
                )
                _store(sub, result.to_dict(), index, out_dir)
                stored = True
            except _RejectedInput as e:
                logger.info("submission %s rejected: %s", sub.pk, e)
                _finish_without_result(sub, Status.REJECTED, e.reason, e.code)
            except _StoredFileError as e:
                logger.error("submission %s: %s", sub.pk, e)
                _finish_without_result(sub, Status.FAILED, str(e), STORED_FILE_CODE)
            except _ModelsFailedError as e:
                logger.error("submission %s: %s", sub.pk, e.__cause__, exc_info=e.__cause__)
                _finish_without_result(sub, Status.FAILED, str(e), MODELS_FAILED_CODE)
            except MediaReadFaultError as e:
                # Memory or the disk failed while decoding: the site's fault,
                # so failed (a moderator may run it again), never "rejected".
                logger.error("submission %s: %s", sub.pk, e.__cause__, exc_info=e.__cause__)
                _finish_without_result(sub, Status.FAILED, str(e), e.code)
            except (Submission.DoesNotExist, _ClaimLost):
                raise
            except SoftTimeLimitExceeded as e:
                if not Submission.objects.filter(pk=sub.pk).exists():
                    raise Submission.DoesNotExist from e
                logger.error("submission %s: soft time limit reached; marking it failed", sub.pk)
                _finish_without_result(sub, Status.FAILED, _timed_out_reason(), TIMED_OUT_CODE)
            except Exception as e:
                if not Submission.objects.filter(pk=sub.pk).exists():
                    raise Submission.DoesNotExist from e
                logger.exception("analysis of submission %s failed", sub.pk)
                _finish_without_result(
                    sub,
                    Status.FAILED,
                    INTERNAL_ERROR_REASON.format(name=type(e).__name__),
                    "internal_error",
                )
            if stored:
                # Outside the handlers above: the result is in, so a time
                # limit now must not fail it (and remove its files).
                try:
                    _drop_other_runs(out_dir)
                except SoftTimeLimitExceeded:
                    logger.warning(
                        "submission %s: time limit reached while removing earlier runs' "
                        "files; its result is stored",
                        sub.pk,
                    )
            else:
                # Rejected or failed: no artifact rows point at any run's
                # files, so no run's folder is worth keeping.
                shutil.rmtree(out_dir.parent, ignore_errors=True)
    except Submission.DoesNotExist:
        logger.info("submission %s was deleted during its analysis; dropping it", sub.pk)
        shutil.rmtree(out_dir.parent, ignore_errors=True)
    except _ClaimLost:
        # A reaper or a moderator's re-run gave the job to another run while
        # this one worked (a stalled host, a clock far off): that run's
        # outcome is the one kept, and its files are left alone.
        logger.warning(
            "submission %s was given to another run during this analysis; outcome dropped",
            sub.pk,
        )
        # This run's own folder: the other run writes into its own.
        shutil.rmtree(out_dir, ignore_errors=True)


def _drop_other_runs(out_dir: Path) -> None:
    """Remove the folders of earlier runs of this submission (a run whose
    worker died, one that lost the job): this run's files are the ones kept."""
    for other in out_dir.parent.glob("run-*"):
        if other != out_dir and other.is_dir():
            shutil.rmtree(other, ignore_errors=True)


def _timed_out_reason() -> str:
    from django.conf import settings

    return TIMED_OUT_REASON.format(limit=float(settings.CELERY_TASK_SOFT_TIME_LIMIT))


def job_timed_out(submission_id: UUID | str) -> None:
    """The hard time limit killed the job's process (called in the worker
    parent): mark it failed, never leave it ``running``. Only while it is
    still a run of this host and PID namespace (the killed child's): one
    another host's or container's worker has claimed since is left alone,
    files included, and so is one that started less than half the limit ago
    (a re-run in another child of this host took the job over: not the run
    that was killed, which ran the whole limit)."""
    from django.conf import settings

    now = timezone.now()
    running = Submission.objects.filter(
        pk=submission_id,
        status=Status.RUNNING,
        started__lte=now - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT / 2),
    )
    worker = running.values_list("worker", flat=True).first()
    if worker is None or not _runs_here(worker):
        return
    done = running.filter(worker=worker).update(
        status=Status.FAILED,
        reason=_timed_out_reason(),
        reason_code=TIMED_OUT_CODE,
        verdict="",
        score=None,
        stage="",
        percent=0,
        finished=now,
    )
    if done:
        logger.error("submission %s: hard time limit reached; marked failed", submission_id)
        drop_partial_files(submission_id)


@contextmanager
def _heartbeat(sub_id: UUID | str, worker: str, attempts: int) -> Iterator[None]:
    """Touch the job's ``heartbeat`` every ``HEARTBEAT_S`` from a thread while
    the body runs (model loading and long stages report no progress), while
    the job is still this run's: ``worker`` at ``attempts``. A run whose job
    was handed to another (the reaper's redelivery, a moderator's re-run)
    must not keep that run looking alive."""
    interval = trusttrace_settings().heartbeat_s
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(interval):
                try:
                    Submission.objects.filter(
                        pk=sub_id, status=Status.RUNNING, worker=worker, attempts=attempts
                    ).update(heartbeat=timezone.now())
                except DatabaseError as e:
                    logger.warning("heartbeat of submission %s not written: %s", sub_id, e)
        finally:
            connection.close()

    thread = threading.Thread(target=beat, name=f"heartbeat-{sub_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval + 5)


def _save_existing(sub: Submission) -> None:
    """Save a row that must still exist (never re-insert a deleted submission)."""
    try:
        sub.save(force_update=True)
    except DatabaseError as e:
        if Submission.objects.filter(pk=sub.pk).exists():
            raise
        raise Submission.DoesNotExist from e


class _ClaimLost(TrusttraceError):  # noqa: N818 (a state, not a fault)
    """The job is no longer this run's to finish (never shown to anyone)."""

    code = "claim_lost"


def _owned(sub: Submission) -> Submission:
    """The job's row, re-read and locked for the final write, while it is as
    this run claimed it (or, before a claim, as it was seen): ``running``, by
    the same worker, at the same attempt. A reaper's redelivery or a
    moderator's re-run of a job that looked stuck changes one of these, and
    the run that now holds the job is the one whose outcome is kept:
    :class:`_ClaimLost`. Must be called inside a transaction."""
    row = Submission.objects.select_for_update().filter(pk=sub.pk).first()
    if row is None:
        raise Submission.DoesNotExist
    if (row.status, row.worker, row.attempts) != (Status.RUNNING, sub.worker, sub.attempts):
        raise _ClaimLost
    return row


def _finish_without_result(sub: Submission, status: Status, reason: str, code: str) -> None:
    """End the job ``rejected`` (bad input) or ``failed`` (our fault) with the
    reason shown to the user, and no verdict or score."""
    with transaction.atomic():
        row = _owned(sub)
        row.status, row.reason, row.reason_code = status, reason, code
        row.verdict, row.score = "", None
        row.stage, row.percent = "", 0  # no progress stands for a job that ended so
        row.finished = timezone.now()
        _save_existing(row)


def _store(
    claimed: Submission, result: dict[str, Any], index: dict[str, Any] | None, out_dir: Path
) -> None:
    with transaction.atomic():
        sub = _owned(claimed)
        _fill(sub, result)
        sub.artifacts.all().delete()
        if index is not None and sub.status == Status.DONE:
            store_index(sub, index, out_dir)
        elif sub.status == Status.DONE:
            sub.series = series_from_result(result)
        _save_existing(sub)


def _fill(sub: Submission, result: dict[str, Any]) -> None:
    """The row's fields from an analysis result (``AnalysisResult.to_dict()``)."""
    status = result["status"]
    # The result names the file as the worker read it (a path under
    # MEDIA_ROOT); people and programs know it by its upload name.
    sub.result = {**result, "file": sub.original_name}
    sub.reason = result.get("reason") or ""
    sub.reason_code = result.get("reason_code") or ""
    sub.timings = result.get("timings", {})
    sub.model_versions = {m["name"]: m["weights_sha256"] for m in result.get("models", [])}
    sub.threshold = result.get("threshold")
    sub.uncertain_band = result.get("uncertain_band")
    sub.finished = timezone.now()
    if status == "done":
        sub.status = Status.DONE
        sub.verdict = result.get("verdict") or ""
        sub.score = result.get("score")
        sub.members = result.get("members", {})
        sub.stage, sub.percent = "done", 100
    else:
        sub.status = Status.REJECTED if status == "rejected" else Status.FAILED
        sub.stage, sub.percent = "", 0


def store_index(sub: Submission, index: dict[str, Any], out_dir: Path) -> list[Artifact]:
    """Artifacts and chart series from an explainer index.json (version 1 or 2).

    Paths must stay inside ``out_dir``; entries of unknown kind or pointing
    outside are skipped with a warning.
    """
    if index.get("version") not in INDEX_VERSIONS:
        raise ValueError(f"unsupported explanation index version {index.get('version')}")
    root = out_dir.resolve()
    kinds = set(ArtifactKind.values)
    rows = []
    for entry in index.get("artifacts", []):
        target = (root / str(entry["path"])).resolve()
        if (
            entry.get("kind") not in kinds
            or not target.is_relative_to(root)
            or not target.is_file()
        ):
            logger.warning("skipping artifact %r of submission %s", entry.get("path"), sub.pk)
            continue
        rows.append(
            Artifact(
                submission=sub,
                kind=entry["kind"],
                file=target.relative_to(media_root().resolve()).as_posix(),
                frame=entry.get("frame"),
                time=entry.get("time"),
                person=entry.get("person"),
                member=entry.get("member") or "",
                caption=str(entry.get("caption") or "")[:300],
                width=int(entry.get("width") or 0),
                height=int(entry.get("height") or 0),
                media_type=str(entry.get("media_type") or "image/png"),
            )
        )
    Artifact.objects.bulk_create(rows)
    sub.series = index.get("series") or series_from_result(sub.result)
    missing = index.get("missing") or {}
    if missing:
        # For programs: which kinds, and the class of each error (the API's
        # result and index). The explainer writes "Class: message"; the
        # message can name server files, so it stays in the worker's log.
        sub.result = {
            **sub.result,
            "explanations_missing": {
                str(k): str(v).split(":", 1)[0].strip() or "error" for k, v in missing.items()
            },
        }
        from explain.index import OUT_OF_TIME

        late = [k for k, v in missing.items() if v == OUT_OF_TIME]
        failed = [k for k in missing if k not in late]
        notes = []
        if failed:
            names = ", ".join(MISSING_LABELS.get(str(k), str(k)) for k in failed)
            notes.append(
                f"Some explanations could not be made ({names}); this was logged. The verdict "
                "does not depend on them, and a moderator can run the analysis again."
            )
        if late:
            names = ", ".join(MISSING_LABELS.get(str(k), str(k)) for k in late)
            notes.append(
                f"The analysis reached its time limit while making explanations, so some were "
                f"not made ({names}). The verdict was made before and does not depend on them."
            )
        for note in notes:
            if note not in sub.reason:
                sub.reason = f"{sub.reason} {note}".strip()
    return rows


# How the result names an explanation kind that could not be made.
MISSING_LABELS = {
    "face": "face crops",
    "frame": "whole frames",
    "gradcam": "Grad-CAM heatmaps",
    "attention": "attention maps",
    "ssim_temporal": "SSIM masks between frames",
    "ssim_reference": "SSIM masks against the reference",
    "chart": "score chart images",
}


def load_index_file(sub: Submission, out_dir: Path) -> list[Artifact]:
    """Read ``out_dir/index.json`` and store it (see :func:`store_index`)."""
    index = json.loads((out_dir / "index.json").read_text(encoding="utf-8"))
    with transaction.atomic():
        sub.artifacts.all().delete()
        rows = store_index(sub, index, out_dir)
        sub.save(update_fields=["series", "reason", "result"])
    return rows
