"""Template context: the signed-in user's role."""

from __future__ import annotations

from django.http import HttpRequest

from accounts.roles import is_moderator, role_of


def roles(request: HttpRequest) -> dict[str, object]:
    """``role`` and ``is_moderator`` for every template."""
    user = getattr(request, "user", None)
    if user is None:
        return {"role": "anonymous", "is_moderator": False}
    return {"role": role_of(user), "is_moderator": is_moderator(user)}
