"""A WSGI app whose streamed body fails after two CSV rows, as an export
does when its database goes away midway, and that echoes the Host header it
was sent at ``/echo-host`` (``test_compose_proxy``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

BODY_SENT = b"a,1\nb,2\n"


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
    if environ.get("PATH_INFO") == "/echo-host":  # the Host the proxy passed on
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([str(environ.get("HTTP_HOST", "")).encode()])
    start_response("200 OK", [("Content-Type", "text/csv; charset=utf-8")])

    def body() -> Iterator[bytes]:
        yield BODY_SENT[:4]
        yield BODY_SENT[4:]
        raise RuntimeError("the database went away")

    return body()
