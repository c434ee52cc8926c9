"""Refusing the requests a web page could make a browser send, before anything is read or done.

Any page a user visits can make their browser POST to this API: a form (url-encoded or
multipart) or a `text/plain` body needs no CORS preflight, so the browser sends the request
even though the page cannot read the answer. The request itself is all there is to judge, and
two checks run on every request that may change state, in this order:

- `Origin` (`refuse_foreign_origin`, in the app's middleware): browsers name the page's origin
  on every POST. A request naming one that is not in `CONVEYOR_ALLOWED_ORIGINS` (none by
  default) is refused with 403, whatever it holds. Clients that are not browsers (curl, the
  SDKs) send no `Origin`.
- the body: JSON only, refused with 415 otherwise. The endpoints that read a body check its
  media type themselves (`body.require_json`); those that take none (pause, resume, cancel,
  retry) refuse a body that is not JSON rather than ignore it (`refuse_a_body`, their guard),
  so a form aimed at them does nothing even from a browser too old to send `Origin`.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Final

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.types import Scope

from entrypoints.api.body import require_json
from entrypoints.api.problems import ProblemError, clip
from entrypoints.setting_values import parse_origin

# Methods that change nothing: a page may send them, and cannot read the answers.
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def refuse_foreign_origin(scope: Scope, allowed: frozenset[str]) -> None:
    """Refuses (403) a state-changing request whose `Origin` is not in `allowed` (origins as
    `setting_values.parse_origin` writes them), before its handler, guards or body are touched.

    Called by the app's one middleware (`app.py`) rather than made a guard: it reads two
    scope fields on every request, where a guard costs a copy of the route handler per
    request (and a thread, when synchronous).
    """
    if scope.get("method") not in SAFE_METHODS:
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1")
                if _origin(origin) not in allowed:
                    raise ProblemError(
                        HTTPStatus.FORBIDDEN,
                        "origin-not-allowed",
                        f"pages at {clip(origin)!r} may not change anything here; "
                        "CONVEYOR_ALLOWED_ORIGINS lists the origins that may",
                    )


async def refuse_a_body(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """A guard for an endpoint that takes no body: a body that is not JSON is refused (415)
    rather than ignored. (A JSON one is ignored: a browser cannot send it cross-site without
    a CORS preflight, which this API does not grant.)"""
    headers = connection.headers
    if "content-type" in headers:
        if isinstance(connection, Request):
            require_json(connection)
        return
    length = headers.get("content-length", "0").strip()
    if "transfer-encoding" in headers or length not in ("", "0"):
        raise ProblemError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "this endpoint takes no body: send none (or JSON, which it ignores)",
        )


def _origin(header: str) -> str | None:
    try:
        return parse_origin(header)
    except ValueError:
        return None
