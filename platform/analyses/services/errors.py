"""The refusals the services raise, and the one table of their HTTP statuses.

Every refusal is a :class:`Refusal`: ``reason`` (``str(error)``) is shown to
the person, ``code`` names it for machines (the API's ``code``, a
submission's ``reason_code``). The site's upload page and the API's exception
handler both take the status from :data:`HTTP_STATUS`.
"""

from __future__ import annotations

from http import HTTPStatus

from ensemble.errors import TrusttraceError


class Refusal(TrusttraceError):  # noqa: N818 (refused on purpose, not an error of ours)
    """Something the site refuses on purpose, with the reason in words.

    ``code`` is set on the class; one call may give a more precise one
    (``UploadRejected(reason, "bad_name")``)."""

    code = "refused"

    def __init__(self, reason: str, code: str | None = None) -> None:
        super().__init__(reason, code=code)

    @property
    def reason(self) -> str:
        return str(self)

    def payload(self) -> dict[str, str]:
        """The API's JSON body for this refusal."""
        return {"detail": self.reason, "code": self.code}


class UploadRejected(Refusal):
    """An upload refused at the edge; ``str(error)`` is shown to the user."""

    code = "rejected"


class ModelsUnavailable(UploadRejected):
    """The site cannot analyse anything: weights are missing or broken."""

    code = "no_weights"


class QuotaExceeded(UploadRejected):
    """A per-user limit (jobs waiting, uploads per hour, storage) is reached."""

    code = "quota"


class StorageUnavailable(UploadRejected):
    """The site could not store the upload (its disk is full, or failed):
    the site's fault, not the file's; nothing is kept."""

    code = "storage_unavailable"


class QueueUnavailable(Refusal):
    """The broker refused the message. The submission and its file are kept
    (``pending``, never queued); the reaper queues it once the broker is back."""

    code = "queue_unavailable"

    def __init__(self, reason: str, submission_id: str) -> None:
        super().__init__(reason)
        self.submission_id = submission_id

    def payload(self) -> dict[str, str]:
        return {**super().payload(), "id": self.submission_id}


class RerunRefused(Refusal):
    """A re-run that is not allowed; ``str(error)`` is shown to the moderator."""

    code = "rerun_refused"


class DecisionError(Refusal):
    """A moderation decision that cannot be recorded; ``str(error)`` is shown
    to the moderator (kept here so that :data:`HTTP_STATUS` can name it)."""

    code = "decision_refused"


class ErasureRefused(Refusal):
    """An account that may not delete itself (an administrator's, or one whose
    moderation decisions the audit log keeps); ``str(error)`` says why."""

    code = "erasure_refused"


# The one error-to-status table. The most specific class of an error found
# here wins (its MRO is searched), so ``Refusal`` is the fallback; every public
# refusal is listed on its own (tests/platform/test_error_table.py checks).
HTTP_STATUS: dict[type[Refusal], HTTPStatus] = {
    Refusal: HTTPStatus.BAD_REQUEST,
    UploadRejected: HTTPStatus.BAD_REQUEST,
    QuotaExceeded: HTTPStatus.TOO_MANY_REQUESTS,
    ModelsUnavailable: HTTPStatus.SERVICE_UNAVAILABLE,
    StorageUnavailable: HTTPStatus.SERVICE_UNAVAILABLE,
    QueueUnavailable: HTTPStatus.SERVICE_UNAVAILABLE,
    RerunRefused: HTTPStatus.CONFLICT,
    DecisionError: HTTPStatus.BAD_REQUEST,
    ErasureRefused: HTTPStatus.FORBIDDEN,
}


def http_status(error: Refusal) -> HTTPStatus:
    """The HTTP status of ``error``: that of its nearest class in :data:`HTTP_STATUS`."""
    for cls in type(error).__mro__:
        if issubclass(cls, Refusal) and cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    raise LookupError(f"{type(error).__name__} is not a Refusal")  # unreachable for a Refusal
