"""Token authentication with an expiry (``API_TOKEN_TTL_S``).

Kept apart from the views: DRF imports its authentication classes while
``rest_framework.views`` is still loading.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed


def token_expires(token: Token) -> datetime | None:
    """When ``token`` expires (``None``: ``API_TOKEN_TTL_S`` is 0, tokens never do)."""
    ttl = int(settings.API_TOKEN_TTL_S)
    return token.created + timedelta(seconds=ttl) if ttl else None


def token_expired(token: Token, *, within: timedelta = timedelta(0)) -> bool:
    """Whether ``token`` is older than ``API_TOKEN_TTL_S``, or will be
    ``within`` from now."""
    expires = token_expires(token)
    return expires is not None and expires <= timezone.now() + within


class ExpiringTokenAuthentication(TokenAuthentication):
    """``Authorization: Token <key>``, refused (and deleted) once expired."""

    def authenticate_credentials(self, key: str) -> tuple[User, Token]:
        user, token = super().authenticate_credentials(key)
        if token_expired(token):
            token.delete()
            raise AuthenticationFailed("The token has expired; get a new one from /api/token/.")
        return user, token
