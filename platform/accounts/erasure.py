"""A user deletes their own account: every upload with its files and
explanations, their requests for review, their API token, then the account.

The moderation audit log is kept whatever happens (``Decision`` and
``Rerun`` protect the moderator who made them), so an account that made
decisions or re-runs cannot delete itself, and neither can an administrator's:
both are for an administrator to deactivate or delete in the admin."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import ProtectedError

from analyses.services.errors import ErasureRefused

BLOCKED_BY_AUDIT_LOG = (
    "Your account made moderation decisions or re-runs, which the audit log keeps "
    "under its name; ask an administrator to deactivate it."
)


@dataclass(frozen=True)
class Erasure:
    """What deleting an account takes with it, or why it cannot be deleted."""

    uploads: int
    reports: int
    blocked: str = ""


def plan(user: User) -> Erasure:
    """What :func:`erase` would delete for ``user``, or why it would refuse."""
    from analyses.models import Submission
    from moderation.models import Decision, Report, Rerun

    uploads = Submission.objects.filter(owner=user).count()
    reports = Report.objects.filter(reporter=user).count()
    blocked = ""
    if user.is_staff or user.is_superuser:
        blocked = (
            "An administrator's account is deleted by another administrator, in the admin, "
            "so that the site is never left without one."
        )
    elif (
        Decision.objects.filter(moderator=user).exists()
        or Rerun.objects.filter(moderator=user).exists()
    ):
        blocked = BLOCKED_BY_AUDIT_LOG
    return Erasure(uploads=uploads, reports=reports, blocked=blocked)


def erase(user: User) -> int:
    """Delete ``user``'s uploads (each as its owner's delete button does:
    its files go once the delete is committed, after a worker storing its
    result) and then the account with what cascades from it (requests for
    review, API token, e-mail verifications). Returns the uploads deleted.

    Raises :class:`ErasureRefused` when the account may not delete itself,
    also when it made a moderation decision while its uploads were being
    deleted (the audit log protects it): the uploads are gone then, the
    account is not."""
    from analyses.models import Submission
    from analyses.services import delete_submission

    refused = plan(user).blocked
    if refused:
        raise ErasureRefused(refused)
    deleted = 0
    while True:
        # Again until none is left: an upload may arrive meanwhile (another
        # tab, the API).
        left = list(Submission.objects.filter(owner=user).order_by("created"))
        if not left:
            break
        for sub in left:
            delete_submission(sub)
            deleted += 1
    try:
        with transaction.atomic():
            # One arriving now is locked as delete_submission locks it (a
            # worker storing its result is waited for) and goes with the
            # account, its files by the same signal.
            late = Submission.objects.select_for_update().filter(owner=user)
            deleted += len(list(late.values_list("pk")))
            User.objects.filter(pk=user.pk).delete()
    except ProtectedError as e:
        raise ErasureRefused(BLOCKED_BY_AUDIT_LOG) from e
    return deleted
