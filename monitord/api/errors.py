"""The one JSON error shape of the API, and the middleware that turns every failure into it.

`{"error": {"code": "<stable code>", "message": "<for people>", "details": {...}?}}`; clients switch on `code`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

log = structlog.get_logger("monitord.api")

JSON = "application/json"

# Codes for aiohttp's own HTTP errors (routing, body size); everything else raises ApiError with its code.
HTTP_CODES: Mapping[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """Raised by handlers; rendered by the middleware with its status, code and optional details."""

    def __init__(self, status: int, code: str, message: str, *, details: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def error_body(code: str, message: str, details: Mapping[str, Any] | None = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = dict(details)
    return orjson.dumps({"error": error})


def error_response(status: int, code: str, message: str, *, details: Mapping[str, Any] | None = None,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=error_body(code, message, details), content_type=JSON,
                        headers=headers)


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    # Keep headers aiohttp chose (Allow on 405), but not its text/plain content type or length.
    headers = {key: value for key, value in exc.headers.items()
               if key.lower() not in ("content-type", "content-length")}
    message = exc.reason
    if exc.status == 404:
        message = "no such route"
    elif exc.status == 405:
        message = f"method not allowed; allowed: {headers.get('Allow', '')}"
    elif exc.status == 413:
        message = exc.text or "request body too large"
    return error_response(exc.status, HTTP_CODES.get(exc.status, f"http_{exc.status}"), message, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: ApiError, aiohttp's HTTP errors and any bug all leave in the one shape."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, details=exc.details, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects and the like are answers, not errors
            raise
        return _from_http_exception(exc)
    except web.RequestPayloadError:  # a broken chunked body or Content-Encoding, found while a view read it
        return error_response(400, "bad_request", "the request body could not be read (its transfer or content "
                                                  "encoding is broken)")
    except Exception:
        log.exception("api.unhandled_error", method=request.method, path=request.path)
        return error_response(500, "internal_error", "internal error; see the monitord log")
