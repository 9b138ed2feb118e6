"""Who may see which submission: owners theirs, moderators and admins all.
Anything else is a 404 (never a 403), so ids leak nothing."""

from __future__ import annotations

from uuid import UUID

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import Http404

from accounts.roles import AnyUser, is_moderator
from analyses.models import Submission


def visible_submissions(user: AnyUser) -> QuerySet[Submission]:
    """The submissions ``user`` may see."""
    if not user.is_authenticated:
        return Submission.objects.none()
    if is_moderator(user):
        return Submission.objects.all()
    return Submission.objects.filter(owner_id=user.pk)


def _as_id(pk: UUID | str) -> UUID:
    """``pk`` as a submission id; anything that is not a UUID is a 404 (the
    API's routes take any text, and Django's UUID lookup raises its own
    ``ValidationError`` for it)."""
    if isinstance(pk, UUID):
        return pk
    try:
        return UUID(str(pk))
    except (ValueError, TypeError, AttributeError) as e:
        raise Http404("No such submission.") from e


def get_visible(user: AnyUser, pk: UUID | str) -> Submission:
    """One visible submission, or :class:`Http404`."""
    try:
        return visible_submissions(user).get(pk=_as_id(pk))
    except (Submission.DoesNotExist, ValidationError) as e:
        raise Http404("No such submission.") from e


def get_owned(user: AnyUser, pk: UUID | str) -> Submission:
    """A submission ``user`` owns, or :class:`Http404`."""
    if not user.is_authenticated:
        raise Http404("No such submission.")
    try:
        return Submission.objects.get(pk=_as_id(pk), owner_id=user.pk)
    except (Submission.DoesNotExist, ValidationError) as e:
        raise Http404("No such submission.") from e
