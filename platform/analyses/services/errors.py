"""The refusals the services raise; ``str(error)`` is shown to the user."""

from __future__ import annotations


class UploadRejected(Exception):  # noqa: N818 (a refusal, not an error of ours)
    """An upload refused at the edge; ``str(error)`` is shown to the user."""

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.code = code


class ModelsUnavailable(UploadRejected):
    """The site cannot analyse anything: weights are missing or broken."""


class RerunRefused(Exception):  # noqa: N818 (a refusal shown to the moderator)
    """A re-run that is not allowed; ``str(error)`` is shown to the moderator."""


class QueueUnavailable(Exception):  # noqa: N818 (a state of the site, shown to the user)
    """The broker refused the message. The submission and its file are kept
    (``pending``, never queued); the reaper queues it once the broker is back."""

    code = "queue_unavailable"

    def __init__(self, reason: str, submission_id: str) -> None:
        super().__init__(reason)
        self.submission_id = submission_id


class QuotaExceeded(UploadRejected):
    """A per-user limit (jobs waiting, uploads per hour, storage) is reached."""
