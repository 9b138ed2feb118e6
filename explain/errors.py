"""Errors of the explanation core, with messages a person can act on."""

from __future__ import annotations


class ExplainError(Exception):
    """Explanations could not be made."""


class InvalidReferenceError(ExplainError):
    """The reference (claimed original) media cannot be used; the message says why."""

    def __init__(self, reason: str, code: str = "invalid_reference") -> None:
        super().__init__(reason)
        self.code = code
