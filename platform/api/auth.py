"""The API's token endpoint, throttled like the site's log-in form.

DRF's stock ``obtain_auth_token`` checks passwords without any limit, which
would let anyone bypass the log-in throttle by guessing through the API.
"""

from __future__ import annotations

from typing import Any

from accounts import throttle
from django.conf import settings
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.exceptions import Throttled, ValidationError


class ThrottledAuthTokenSerializer(AuthTokenSerializer):
    """Refuses a username+IP after too many failures, before checking the password."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        request = self.context.get("request")
        username = str(attrs.get("username", ""))
        ip = throttle.client_ip(request._request) if request is not None else "unknown"
        if throttle.is_locked(username, ip):
            minutes = max(1, int(settings.LOGIN_LOCKOUT_S) // 60)
            raise Throttled(
                wait=int(settings.LOGIN_LOCKOUT_S),
                detail=(
                    "Too many failed log-ins for this account from your address; "
                    f"try again in {minutes} minutes or reset your password."
                ),
            )
        try:
            validated: dict[str, Any] = super().validate(attrs)
        except ValidationError:
            throttle.record_failure(username, ip)
            raise
        throttle.clear(username, ip)
        return validated


class ThrottledObtainAuthToken(ObtainAuthToken):
    """``POST /api/token/`` with ``username`` and ``password``: a token, or 429
    after too many failures (same counter as the site's log-in form)."""

    serializer_class = ThrottledAuthTokenSerializer


obtain_auth_token = ThrottledObtainAuthToken.as_view()
