"""The site's 404 and 500 pages: under ``/api/`` they answer as the API's
errors do (``{"detail", "code"}``, JSON), so a program that asks for an
address no route matches, or meets a server error outside DRF's handler,
reads the same shape as every other API error; elsewhere Django's pages.

:class:`ApiErrorsMiddleware` does the same for whatever else answers an
``/api/`` request with a page instead of JSON: Django's own 400 for a request
it refuses before a view runs, and, with ``DEBUG`` on (``make run``), its
debug 404 and 500 pages, which skip the handlers below."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.views import defaults

API_PREFIX = "/api/"


def _is_api(request: HttpRequest) -> bool:
    return request.path_info.startswith(API_PREFIX)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return _json_error(404)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        # Nothing about the failure itself: it is in the log, not for clients.
        return _json_error(500)
    return defaults.server_error(request)


# What an /api/ error that did not come from the API's handler says.
PAGE_ERRORS = {
    400: ("The request could not be read.", "parse_error"),
    403: ("You do not have permission to perform this action.", "permission_denied"),
    404: ("Not found.", "not_found"),
    405: ("Method not allowed.", "method_not_allowed"),
    413: ("The request is too large.", "too_large"),
    500: ("A server error occurred.", "server_error"),
}


def _json_error(status: int, reason: str = "Error") -> JsonResponse:
    detail, code = PAGE_ERRORS.get(status, (reason + ".", "error"))
    return JsonResponse({"detail": detail, "code": code}, status=status)


class ApiErrorsMiddleware:
    """Under ``/api/``, an error answered with anything but JSON becomes
    ``{"detail", "code"}`` with the same status. First in ``MIDDLEWARE``, so
    it sees every answer, whatever raised it and whatever ``DEBUG`` is."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        kind = response.get("Content-Type", "")
        if (
            _is_api(request)
            and response.status_code >= 400
            and not kind.startswith(("application/json", "application/problem+json"))
        ):
            replaced = _json_error(response.status_code, response.reason_phrase)
            for header in ("Allow", "WWW-Authenticate", "Retry-After", "Content-Range"):
                if response.has_header(header):
                    replaced[header] = response[header]
            return replaced
        return response
