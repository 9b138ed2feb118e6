"""Site-wide response headers."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase
from django.utils.cache import add_never_cache_headers


class PrivateResponsesMiddleware:
    """Answers to a signed-in user, or to a request that carries credentials
    (an API token), are never stored by a browser or shared cache: results,
    scores and moderators' notes are one person's. A view that set its own
    ``Cache-Control`` keeps it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        user = getattr(request, "user", None)
        signed_in = bool(user is not None and user.is_authenticated)
        if (signed_in or "HTTP_AUTHORIZATION" in request.META) and not response.has_header(
            "Cache-Control"
        ):
            add_never_cache_headers(response)
        return response
