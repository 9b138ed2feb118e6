"""Login throttling: a cache counter of failures per (username, IP).

After ``LOGIN_MAX_FAILURES`` failures within ``LOGIN_LOCKOUT_S`` seconds the
pair is locked until the window expires; a success clears the counter. Keyed
on the pair so that one attacker cannot lock a user out from everywhere.
"""

from __future__ import annotations

import hashlib
import unicodedata

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

_PREFIX = "login-failures:"


def client_ip(request: HttpRequest) -> str:
    """The peer address (proxies must set REMOTE_ADDR via their own middleware)."""
    return str(request.META.get("REMOTE_ADDR", "unknown"))


def normalize_username(username: str) -> str:
    """The form of a user name the counter is keyed on.

    Django's username field applies NFKC and strips whitespace before it looks
    the user up, so ``"ａｌｉｃｅ "`` logs in as ``alice``; the counter must
    fold the same variants (and case) or each variant gets fresh attempts.
    """
    return unicodedata.normalize("NFKC", username).strip().casefold()


def _key(username: str, ip: str) -> str:
    digest = hashlib.sha256(f"{normalize_username(username)}|{ip}".encode()).hexdigest()
    return _PREFIX + digest


def is_locked(username: str, ip: str) -> bool:
    """Whether this username+IP has used up its failures."""
    return int(cache.get(_key(username, ip), 0)) >= int(settings.LOGIN_MAX_FAILURES)


def record_failure(username: str, ip: str) -> int:
    """Count one failed login; returns the failures so far in the window."""
    key = _key(username, ip)
    if cache.add(key, 1, timeout=int(settings.LOGIN_LOCKOUT_S)):
        return 1
    try:
        return int(cache.incr(key))
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=int(settings.LOGIN_LOCKOUT_S))
        return 1


def clear(username: str, ip: str) -> None:
    """Forget failures after a successful login."""
    cache.delete(_key(username, ip))
