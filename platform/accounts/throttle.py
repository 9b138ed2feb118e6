"""Log-in throttling: cache counters of attempts per (username, IP) and per IP.

Every attempt is counted *before* the password is checked (an atomic cache
increment), so parallel guesses cannot all slip through one check. After
``LOGIN_MAX_FAILURES`` attempts within ``LOGIN_LOCKOUT_S`` seconds the pair
is locked until the window expires; a success clears the pair's counter.
Keyed on the pair so that one attacker cannot lock a user out from
everywhere. The per-IP counter (``LOGIN_MAX_FAILURES_PER_IP``, across user
names) counts failures only: a success takes its own attempt back.

The client address is ``REMOTE_ADDR``, or, behind a reverse proxy, the
entry of ``TRUSTED_PROXY_HEADER`` (e.g. ``X-Forwarded-For``) that the
``TRUSTED_PROXY_COUNT``-th proxy from the site appended: entries further
left are written by the client and cannot be trusted. Every limit (log-in,
token, password change and reset, sign-up, account deletion) counts by
:func:`client_network`: an IPv4 address, or an IPv6 address's /64, since one
IPv6 subscriber holds a whole /64 and could take fresh attempts from each of
its addresses.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import unicodedata

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

_PREFIX = "login-failures:"
_IP_PREFIX = "login-failures-ip:"


def client_ip(request: HttpRequest) -> str:
    """The client's address: the trusted proxy's header entry when one is
    configured, else the peer address."""
    header = str(getattr(settings, "TRUSTED_PROXY_HEADER", "") or "")
    if header:
        key = "HTTP_" + header.upper().replace("-", "_")
        entries = [e.strip() for e in str(request.META.get(key, "")).split(",") if e.strip()]
        count = max(1, int(getattr(settings, "TRUSTED_PROXY_COUNT", 1)))
        if len(entries) >= count:
            return entries[-count]
    return str(request.META.get("REMOTE_ADDR", "unknown"))


def client_network(request: HttpRequest) -> str:
    """:func:`client_ip`, widened to its /64 for IPv6 (one subscriber's
    usual allocation: counting single IPv6 addresses lets one client walk
    through millions)."""
    ip = client_ip(request)
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(ip)
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped is not None:
                # an IPv4 client of a dual-stack listener ("::ffff:a.b.c.d"):
                # its own address, not the /64 every such client shares
                return str(address.ipv4_mapped)
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return ip


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


def _ip_key(ip: str) -> str:
    return _IP_PREFIX + hashlib.sha256(ip.encode()).hexdigest()


def _window() -> int:
    return int(settings.LOGIN_LOCKOUT_S)


def count(key: str, window_s: int) -> int:
    """Add one to a counter that expires ``window_s`` after its first use;
    atomic (``cache.add`` then ``cache.incr``) in Redis and the local cache."""
    if cache.add(key, 1, timeout=window_s):
        return 1
    try:
        return int(cache.incr(key))
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=window_s)
        return 1


def peek(key: str) -> int:
    """A counter of :func:`count` as it stands (0 when unused or expired)."""
    return int(cache.get(key) or 0)


def begin_attempt(username: str, ip: str) -> bool:
    """Count one log-in attempt before its password is checked; whether it
    may be checked (False: this user+IP or this IP is locked)."""
    window = _window()
    allowed = True
    for key, limit in (
        (_key(username, ip), int(settings.LOGIN_MAX_FAILURES)),
        (_ip_key(ip), int(settings.LOGIN_MAX_FAILURES_PER_IP)),
    ):
        n = count(key, window)
        if n == limit:
            # The attempt that uses the last allowance starts the lock: a
            # whole window from now, not what is left of the window the
            # first attempt opened (which could be seconds).
            cache.touch(key, window)
        allowed = allowed and n <= limit
    return allowed


def succeeded(username: str, ip: str) -> None:
    """A successful log-in: clear the pair, take the attempt back from the IP."""
    cache.delete(_key(username, ip))
    with contextlib.suppress(ValueError):  # expired meanwhile
        cache.decr(_ip_key(ip))


def is_locked(username: str, ip: str) -> bool:
    """Whether this username+IP (or this IP) has used up its attempts (read only)."""
    return int(cache.get(_key(username, ip), 0)) >= int(settings.LOGIN_MAX_FAILURES) or int(
        cache.get(_ip_key(ip), 0)
    ) >= int(settings.LOGIN_MAX_FAILURES_PER_IP)


def clear(username: str, ip: str) -> None:
    """Forget the pair's attempts."""
    cache.delete(_key(username, ip))


LOCKED_MESSAGE = (
    "Too many failed log-ins for this account or from your address; try again in "
    "{minutes} minutes or reset your password."
)


def lockout_minutes() -> int:
    """How long a lock lasts, in whole minutes (at least one)."""
    return max(1, _window() // 60)


def locked_message() -> str:
    return LOCKED_MESSAGE.format(minutes=lockout_minutes())
