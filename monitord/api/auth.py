"""Optional bearer-token check for every route but /healthz and the status page's data-free shell, in constant time.

The token is asked for on every request, so a reload that rotates `api.token` (or sets or clears it) is in force
for the next request.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from monitord.api.errors import ApiError
from monitord.model import Secret

OPEN_PATHS = frozenset({"/healthz"})  # a liveness probe must work without credentials
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="monitord"'}


def bearer_middleware(token: Callable[[], Secret | None], open_paths: Iterable[str] = OPEN_PATHS,
                      open_prefixes: tuple[str, ...] = ()) -> Middleware:
    """Reject requests without `Authorization: Bearer <token()>` with 401 in the API's error shape (no token: open).

    The scheme name is case-insensitive (RFC 9110 section 11.1): `bearer`, `BEARER` and `Bearer` are the same.
    """
    unguarded = frozenset(open_paths)

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        current = token()
        if current is not None and request.path not in unguarded and not request.path.startswith(open_prefixes):
            expected = current.reveal().encode()
            given = request.headers.get("Authorization", "")
            scheme, _, credentials = given.strip().partition(" ")
            presented = credentials.strip().encode("utf-8", "surrogateescape")
            # compare_digest's time depends only on the length of its inputs, never on where they differ
            if scheme.lower() != "bearer" or not hmac.compare_digest(presented, expected):
                code = "unauthorized"
                message = "missing bearer token" if not given else "invalid bearer token"
                raise ApiError(401, code, message, headers=_CHALLENGE)
        return await handler(request)

    return require_token
