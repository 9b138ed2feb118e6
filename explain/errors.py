"""Errors of the explanation core, with messages a person can act on."""

from __future__ import annotations

from ensemble.errors import TrusttraceError


class ExplainError(TrusttraceError):
    """Explanations could not be made."""

    code = "explain"


class InvalidReferenceError(ExplainError):
    """The reference (claimed original) media cannot be used; the message says why."""

    code = "invalid_reference"

    def __init__(self, reason: str, code: str | None = None) -> None:
        super().__init__(reason, code=code)
