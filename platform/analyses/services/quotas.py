"""Per-user limits on uploads, checked before a byte is stored: jobs waiting
or running, stored bytes, uploads in the last hour (refused ones too: each
cost a probe). A refusal says which limit and what to do
(:class:`QuotaExceeded`, shown to the user, 429)."""

from __future__ import annotations

import time
from datetime import timedelta

from django.contrib.auth.models import User
from django.core.cache import cache
from django.db.models import Sum
from django.utils import timezone

from analyses.config import trusttrace_settings
from analyses.models import Status, Submission
from analyses.services.errors import QuotaExceeded

HOUR_S = 3600


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


# Refused uploads are counted per user in buckets of this many seconds; the
# hour's count is the sum of the buckets it covers (one bucket more than the
# hour: a refusal counts for an hour at least, a little more at most).
REFUSED_BUCKET_S = 300
# Refusals that are the site's fault, not the file's: not counted. A probe
# that crashed on the file (``probe_failed``) is counted like one that ran out
# of time or memory on it: a file crafted to crash the decoder costs a probe
# each time it is sent.
NOT_COUNTED_CODES = frozenset({"storage_unavailable"})


def _refused_keys(owner: User, now: float) -> list[str]:
    current = int(now // REFUSED_BUCKET_S)
    buckets = range(current - HOUR_S // REFUSED_BUCKET_S, current + 1)
    return [f"trusttrace:refused-uploads:{owner.pk}:{b}" for b in buckets]


def refused_uploads(owner: User) -> int:
    """Uploads of ``owner`` in about the last hour that are not among its
    submissions: they stored nothing (refused or reused), or were deleted
    since."""
    counts = cache.get_many(_refused_keys(owner, time.time()))
    return sum(int(v) for v in counts.values())


def note_unsaved_upload(owner: User, code: str) -> None:
    """Count an upload that stored nothing against the owner's hourly limit:
    one the edge checks refused (``code``: the refusal's), one answered
    with an earlier result (``"reused"``), or a submission of the last hour
    that its owner deleted (``"deleted"``). Each cost a probe (up to the
    probe's time and memory caps), so it must not be free. Counted in the cache
    with atomic increments (shared by every web process when Redis is the
    cache; per process with the default local-memory cache)."""
    if not trusttrace_settings().max_uploads_per_hour or code in NOT_COUNTED_CODES:
        return
    key = _refused_keys(owner, time.time())[-1]
    # add() creates the bucket only when it is missing; incr() is atomic.
    cache.add(key, 0, HOUR_S + 2 * REFUSED_BUCKET_S)
    try:
        cache.incr(key)
    except ValueError:  # expired between the two calls
        cache.set(key, 1, HOUR_S + 2 * REFUSED_BUCKET_S)


def check_quotas(owner: User, incoming_bytes: int, *, hourly_only: bool = False) -> None:
    """Refuse an upload of ``incoming_bytes`` that would take ``owner`` over a
    limit (``MAX_PENDING_PER_USER``, ``MAX_STORAGE_PER_USER_BYTES``,
    ``MAX_UPLOADS_PER_HOUR``; 0 disables one). ``hourly_only``: the upload
    may store nothing (an earlier result reused), so only the hourly limit
    applies before its probe."""
    mine = Submission.objects.filter(owner_id=owner.pk)
    limits = trusttrace_settings()
    max_pending = 0 if hourly_only else limits.max_pending_per_user
    if max_pending:
        waiting = mine.filter(status__in=(Status.PENDING, Status.RUNNING)).count()
        if waiting >= max_pending:
            raise QuotaExceeded(
                f"You have {waiting} analyses waiting or running; the limit is {max_pending}. "
                "Upload more once some have finished.",
                "quota_pending",
            )
    max_per_hour = limits.max_uploads_per_hour
    if max_per_hour:
        saved = mine.filter(created__gte=timezone.now() - timedelta(seconds=HOUR_S)).count()
        refused = refused_uploads(owner)
        recent = saved + refused
        if recent >= max_per_hour:
            of_them = (
                f" ({refused} of them refused, answered with an earlier result or deleted)"
                if refused
                else ""
            )
            raise QuotaExceeded(
                f"You uploaded {recent} files in the last hour{of_them}; the limit is "
                f"{max_per_hour} an hour. Please try again later.",
                "quota_rate",
            )
    max_storage = 0 if hourly_only else limits.max_storage_per_user_bytes
    if max_storage:
        sums = mine.aggregate(files=Sum("size_bytes"), references=Sum("reference_size_bytes"))
        stored = int(sums["files"] or 0) + int(sums["references"] or 0)
        if stored + incoming_bytes > max_storage:
            raise QuotaExceeded(
                f"Your submissions take {_mib(stored)}; with this file they would exceed your "
                f"{_mib(max_storage)} of storage. Delete old submissions to make room.",
                "quota_storage",
            )


def previous_result(owner: User, sha256: str, reference_sha256: str = "") -> Submission | None:
    """The owner's latest finished analysis of the same file (and reference),
    offered instead of analysing it again."""
    return (
        Submission.objects.filter(
            owner_id=owner.pk,
            sha256=sha256,
            reference_sha256=reference_sha256,
            status=Status.DONE,
        )
        .order_by("-created")
        .first()
    )
