"""Typed readers of environment variables for the settings.

Whole numbers and lists go through django-environ's readers
(cookiecutter-django's ``env.int``/``env.list``; its ``env.float`` misreads,
see :func:`env_float`); anything that does not parse raises
:class:`ImproperlyConfigured` naming the variable, so every process (web,
worker, ``manage.py``) refuses to start on a typo instead of running with a
value nobody chose. A boolean accepts only the usual words for true and
false (as healthchecks' ``envbool``): ``TRUSTTRACE_X=yes-please`` is an
error, not ``False``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import environ
from django.core.exceptions import ImproperlyConfigured

# Text is read from os.environ itself: environ.Env().str() takes a value that
# starts with "$" for the name of another variable, and a password may.
_env = environ.Env()

TRUE_WORDS = frozenset({"1", "true", "yes", "on", "y", "ok"})
# An empty value is false, as it always was here.
FALSE_WORDS = frozenset({"0", "false", "no", "off", "n", ""})

C = TypeVar("C", bound=str)
# A path setting's default: a path, or None for an optional file.
P = TypeVar("P", Path, None)


def _bad(name: str, what: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"{name}={os.environ.get(name)!r} is not {what}")


def env_str(name: str, default: str) -> str:
    """The variable's text, or ``default`` when it is not set."""
    return os.environ.get(name, default)


def env_int(name: str, default: int) -> int:
    """A whole number (``TRUSTTRACE_FRAMES=32``)."""
    try:
        value: int = _env.int(name, default=default)
    except ValueError as e:
        raise _bad(name, "a whole number") from e
    return value


def env_float(name: str, default: float) -> float:
    """A number (``TRUSTTRACE_THRESHOLD=0.5``, ``1e3``, ``inf``; not ``nan``).

    Not django-environ's ``Env.float``: it deletes every character that is not
    a digit, comma, dot or minus before parsing, so ``0.5abc`` reads 0.5 and
    ``1e3`` reads 13.0."""
    text = os.environ.get(name)
    if text is None:
        return float(default)
    try:
        value = float(text)
    except ValueError as e:
        raise _bad(name, "a number") from e
    if math.isnan(value):  # compares false with everything: a limit that never applies
        raise _bad(name, "a number")
    return value


def env_bool(name: str, default: bool) -> bool:
    """``1/true/yes/on/y/ok`` or ``0/false/no/off/n`` (any case), or empty for false."""
    value = os.environ.get(name)
    if value is None:
        return default
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise _bad(name, f"true or false (one of {', '.join(sorted(TRUE_WORDS | FALSE_WORDS - {''}))})")


def env_list(name: str, default: Sequence[str]) -> list[str]:
    """Comma-separated words (``TRUSTTRACE_MEMBERS=resnet50,effnet_b7``);
    blanks around them and empty items are dropped."""
    if name not in os.environ:
        return list(default)
    return [item.strip() for item in _env.list(name) if item.strip()]


def env_choice(name: str, choices: Sequence[C], default: C) -> C:
    """One of ``choices`` (``TRUSTTRACE_BACKEND=openvino``)."""
    value = os.environ.get(name, default)
    for choice in choices:
        if value == choice:
            return choice
    raise _bad(name, f"one of {', '.join(choices)}")


def env_path(name: str, default: P) -> Path | P:
    """A path; unset or empty means ``default`` (``None`` for an optional file)."""
    value = os.environ.get(name)
    return Path(value) if value else default
