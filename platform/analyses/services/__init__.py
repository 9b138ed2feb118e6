"""The analyses services: the only place the site meets the detection core
(``ensemble`` and ``explain``; both imported lazily, in the worker only).

They own a submission's status: ``pending -> running -> done | rejected |
failed``. ``rejected`` is bad input (final, the reason is shown, never
retried); ``failed`` is our fault (logged with its traceback, a moderator may
retry). A crash is never turned into a score.

One module per concern; the public names are re-exported here:

- :mod:`.members`: which models the site runs (weights, backend, combination);
- :mod:`.uploads`: the edge check of an upload and the new submission;
- :mod:`.quotas`: per-user limits, and an earlier result of the same file;
- :mod:`.queue`: sending the worker its message;
- :mod:`.running`: running an analysis and storing its outcome;
- :mod:`.reaper`: jobs that never finish (queued again or failed);
- :mod:`.reruns`: re-running and deleting.
"""

from __future__ import annotations

from analyses.services.errors import (
    HTTP_STATUS,
    DecisionError,
    ModelsUnavailable,
    QueueUnavailable,
    QuotaExceeded,
    Refusal,
    RerunRefused,
    StorageUnavailable,
    UploadRejected,
    http_status,
)
from analyses.services.members import (
    MemberStatus,
    RuntimeStatus,
    models_status,
    record_weights_versions,
    require_models,
    runtime_status,
)
from analyses.services.queue import QUEUE_DOWN_REASON, enqueue, send
from analyses.services.quotas import check_quotas, previous_result
from analyses.services.reaper import WORKER_STOPPED_REASON, Reaped, is_stale, reap, start_reaper
from analyses.services.reruns import RERUNNABLE, delete_submission, rerun
from analyses.services.running import (
    _ANALYZERS,
    INDEX_VERSIONS,
    INTERNAL_ERROR_REASON,
    TIMED_OUT_CODE,
    WORKER_LOST_CODE,
    WORKER_LOST_REASON,
    _analyzer,
    is_abandoned,
    job_timed_out,
    load_index_file,
    run_submission,
    series_from_result,
    store_index,
)
from analyses.services.storage import (
    ARTIFACT_DIR,
    UPLOAD_DIR,
    artifact_dir,
    attempt_dir,
    media_root,
)
from analyses.services.uploads import (
    PROBE_FRAMES,
    Probed,
    _accept,
    check_name,
    check_size,
    create_submission,
    display_name,
    probe,
    submit,
)

# Older name of media_root (tests and scripts used it).
_media_root = media_root

__all__ = [
    "ARTIFACT_DIR",
    "HTTP_STATUS",
    "INDEX_VERSIONS",
    "INTERNAL_ERROR_REASON",
    "PROBE_FRAMES",
    "QUEUE_DOWN_REASON",
    "RERUNNABLE",
    "TIMED_OUT_CODE",
    "UPLOAD_DIR",
    "WORKER_LOST_CODE",
    "WORKER_LOST_REASON",
    "WORKER_STOPPED_REASON",
    "_ANALYZERS",
    "DecisionError",
    "MemberStatus",
    "ModelsUnavailable",
    "Probed",
    "QueueUnavailable",
    "QuotaExceeded",
    "Reaped",
    "Refusal",
    "RerunRefused",
    "RuntimeStatus",
    "StorageUnavailable",
    "UploadRejected",
    "_accept",
    "_analyzer",
    "_media_root",
    "artifact_dir",
    "attempt_dir",
    "check_name",
    "check_quotas",
    "check_size",
    "create_submission",
    "delete_submission",
    "display_name",
    "enqueue",
    "http_status",
    "is_abandoned",
    "is_stale",
    "job_timed_out",
    "load_index_file",
    "media_root",
    "models_status",
    "previous_result",
    "probe",
    "reap",
    "record_weights_versions",
    "require_models",
    "rerun",
    "run_submission",
    "runtime_status",
    "send",
    "series_from_result",
    "start_reaper",
    "store_index",
    "submit",
]
