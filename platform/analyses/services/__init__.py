"""The analyses services: the only place the site meets the detection core
(``ensemble`` and ``explain``; both imported lazily, in the worker only).

They own a submission's status: ``pending -> running -> done | rejected |
failed``. ``rejected`` is bad input (final, the reason is shown, never
retried); ``failed`` is our fault (logged with its traceback, a moderator may
retry). A crash is never turned into a score.

One module per concern; the public names are re-exported here:

- :mod:`.members`: which models the site runs (weights, backend, combination);
- :mod:`.uploads`: the edge check of an upload and the new submission;
- :mod:`.queue`: sending the worker its message;
- :mod:`.running`: running an analysis and storing its outcome;
- :mod:`.rerun`: re-running and deleting.
"""

from __future__ import annotations

from analyses.services.errors import ModelsUnavailable, RerunRefused, UploadRejected
from analyses.services.members import (
    MemberStatus,
    RuntimeStatus,
    models_status,
    record_weights_versions,
    require_models,
    runtime_status,
)
from analyses.services.queue import enqueue
from analyses.services.rerun import RERUNNABLE, delete_submission, rerun
from analyses.services.running import (
    _ANALYZERS,
    INDEX_VERSIONS,
    INTERNAL_ERROR_REASON,
    WORKER_LOST_CODE,
    WORKER_LOST_REASON,
    _analyzer,
    load_index_file,
    run_submission,
    series_from_result,
    store_index,
)
from analyses.services.storage import ARTIFACT_DIR, UPLOAD_DIR, artifact_dir, media_root
from analyses.services.uploads import (
    PROBE_FRAMES,
    Probed,
    _accept,
    check_name,
    check_size,
    create_submission,
    display_name,
    probe,
)

# Older name of media_root (tests and scripts used it).
_media_root = media_root

__all__ = [
    "ARTIFACT_DIR",
    "INDEX_VERSIONS",
    "INTERNAL_ERROR_REASON",
    "PROBE_FRAMES",
    "RERUNNABLE",
    "UPLOAD_DIR",
    "WORKER_LOST_CODE",
    "WORKER_LOST_REASON",
    "_ANALYZERS",
    "MemberStatus",
    "ModelsUnavailable",
    "Probed",
    "RerunRefused",
    "RuntimeStatus",
    "UploadRejected",
    "_accept",
    "_analyzer",
    "_media_root",
    "artifact_dir",
    "check_name",
    "check_size",
    "create_submission",
    "delete_submission",
    "display_name",
    "enqueue",
    "load_index_file",
    "media_root",
    "models_status",
    "probe",
    "record_weights_versions",
    "require_models",
    "rerun",
    "run_submission",
    "runtime_status",
    "series_from_result",
    "store_index",
]
