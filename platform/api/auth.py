"""The API's tokens: issued by a throttled endpoint (like the site's log-in
form), expiring after ``API_TOKEN_TTL_S``, revocable by their owner, and
deleted when the owner's password changes (:mod:`api.signals`).

DRF's stock ``obtain_auth_token`` checks passwords without any limit, which
would let anyone bypass the log-in throttle by guessing through the API.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.exceptions import Throttled
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import throttle
from api.authentication import token_expired, token_expires


class ThrottledAuthTokenSerializer(AuthTokenSerializer):
    """Counts the attempt before the password is checked and refuses a locked
    user name+IP or IP (``accounts.throttle``, the log-in form's counters)."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        request = self.context.get("request")
        username = str(attrs.get("username", ""))
        ip = throttle.client_network(request._request) if request is not None else "unknown"
        if not throttle.begin_attempt(username, ip):
            raise Throttled(wait=int(settings.LOGIN_LOCKOUT_S), detail=throttle.locked_message())
        validated: dict[str, Any] = super().validate(attrs)
        throttle.succeeded(username, ip)
        return validated


class ThrottledObtainAuthToken(ObtainAuthToken):
    """``POST /api/token/`` with ``username`` and ``password``: a token, or 429
    after too many failures (same counter as the site's log-in form)."""

    serializer_class = ThrottledAuthTokenSerializer
    # The credentials are in the body: a stale "Authorization: Token ..."
    # header a client still sends (the expired token it is replacing) must
    # not answer 401 on the very endpoint that 401 points to, and a browser's
    # session is no reason to ask for a CSRF token.
    authentication_classes = ()

    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """The user's token and when it expires (``expires``, ISO 8601, null
        when tokens never do). A token that has expired, or would within
        :func:`renewal_window`, is replaced by a new one: a client logging in
        should not get a token that stops working minutes later."""
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = serializer.validated_data["user"]
        token, _ = Token.objects.get_or_create(user=user)
        if token_expired(token, within=renewal_window()):
            # By key: a token another request has just issued stays.
            Token.objects.filter(pk=token.pk).delete()
            try:
                with transaction.atomic():
                    token = Token.objects.create(user=user)
            except IntegrityError:
                # Another request renewed it at the same moment (one token
                # per user): that one is fresh, both callers get it.
                token = Token.objects.get(user=user)
        expires = token_expires(token)
        body = {"token": token.key, "expires": expires.isoformat() if expires else None}
        # A credential: never stored by a cache (RFC 6749, 5.1).
        return Response(body, headers={"Cache-Control": "no-store"})


def renewal_window() -> timedelta:
    """How close to its expiry a token is renewed when its owner logs in:
    a day, or a tenth of ``API_TOKEN_TTL_S`` when that is shorter. Renewing
    ends the old token for every client of the account (one token per
    user), so it is not done earlier than that."""
    ttl = int(settings.API_TOKEN_TTL_S)
    return min(timedelta(days=1), timedelta(seconds=ttl / 10))


obtain_auth_token = ThrottledObtainAuthToken.as_view()


class RevokeToken(APIView):
    """``POST /api/token/revoke/``: delete the caller's token (204); the next
    ``POST /api/token/`` issues a new one."""

    permission_classes = (IsAuthenticated,)

    @extend_schema(request=None, responses={204: None})
    def post(self, request: Request) -> Response:
        user_id = request.user.pk
        if user_id is not None:
            Token.objects.filter(user_id=user_id).delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


revoke_token = RevokeToken.as_view()
