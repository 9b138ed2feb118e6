"""Roles. Submitter is everyone signed in; moderators belong to the
``moderators`` group; admins are superusers (Django admin)."""

from __future__ import annotations

from typing import Literal

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, User
from django.core.exceptions import PermissionDenied

MODERATORS_GROUP = "moderators"
Role = Literal["anonymous", "submitter", "moderator", "admin"]

AnyUser = AbstractBaseUser | AnonymousUser


def role_of(user: AnyUser) -> Role:
    """The strongest role a user holds."""
    if not user.is_authenticated:
        return "anonymous"
    if getattr(user, "is_superuser", False):
        return "admin"
    groups = getattr(user, "groups", None)
    if groups is not None and groups.filter(name=MODERATORS_GROUP).exists():
        return "moderator"
    return "submitter"


def is_moderator(user: AnyUser) -> bool:
    """Moderators and admins review submissions and see everyone's."""
    return role_of(user) in ("moderator", "admin")


def signed_in(user: AnyUser) -> User:
    """``request.user`` of a view that requires sign-in, as the account it is;
    :class:`PermissionDenied` for anyone else (the view's own check comes first)."""
    if not isinstance(user, User) or not user.is_authenticated:
        raise PermissionDenied("Sign in first.")
    return user
