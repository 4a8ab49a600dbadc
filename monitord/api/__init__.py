"""The query API: an aiohttp application over the live state, the ranking and the store. It reads; it never probes.

The daemon builds one ApiContext (over its ranking service), subscribes `ctx.on_probe` to the result pipeline,
calls `ctx.on_reload(removed)` after a reload, and serves `make_app(ctx)` (or `await ApiServer.start(ctx, host,
port)`). A context made without a ranking service (tests, benchmarks) makes its own, whose watch the app runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from monitord.api import page
from monitord.api.auth import OPEN_PATHS, bearer_middleware
from monitord.api.context import CONTEXT, ApiContext
from monitord.api.errors import error_body, error_middleware
from monitord.api.views import add_routes

__all__ = ["CONTEXT", "ApiContext", "ApiServer", "make_app"]

log = structlog.get_logger("monitord.api")

MAX_BODY_BYTES = 64 * 1024  # a selection request is a few hundred bytes


async def _best_watcher(app: web.Application) -> AsyncIterator[None]:
    """Only for a context that owns its ranking service; the daemon's supervisor runs the daemon's."""
    ctx = app[CONTEXT]
    if not ctx.owns_rankings:
        yield
        return
    task = asyncio.create_task(ctx.ranking_service.watch(), name="monitord.ranking.watch")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _end_streams(app: web.Application) -> None:
    app[CONTEXT].events.close()


def make_app(ctx: ApiContext) -> web.Application:
    middlewares: list[Middleware] = [error_middleware]
    middlewares.append(bearer_middleware(ctx.current_token, OPEN_PATHS | page.OPEN_PATHS, page.OPEN_PREFIXES))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app[CONTEXT] = ctx
    add_routes(app)
    page.add_page_routes(app)
    app.cleanup_ctx.append(_best_watcher)
    app.on_shutdown.append(_end_streams)  # before aiohttp waits for handlers: event streams end at once
    return app


MAX_CONNECTIONS = 1000
IDLE_TIMEOUT_S = 15.0


class ConnectionCap:
    """The protocol factory of the listening socket: at most `limit` connections at once. A connection past the
    limit closes the oldest one that has no request in progress (an idle keep-alive, or a client that has not
    finished its request head: slowloris), so the API keeps answering; when every connection is busy, the new one
    gets a 503 in the error shape and is closed."""

    def __init__(self, server: web.Server, limit: int) -> None:
        self._server = server
        self._limit = limit
        self.evicted_total = 0
        self.refused_total = 0

    def __call__(self) -> asyncio.BaseProtocol:
        connections = self._server.connections
        if len(connections) >= self._limit:
            idle = [h for h in connections if not getattr(h, "_request_in_progress", False)]
            for victim in idle[: len(connections) - self._limit + 1]:
                victim.force_close()
                self.evicted_total += 1
            if not idle:
                self.refused_total += 1
                return _Refuse()
        return self._server()


class _Refuse(asyncio.Protocol):
    """Answers 503 and closes: every connection slot is busy with a request in progress."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        body = error_body("unavailable", "too many connections; try again shortly")
        assert isinstance(transport, asyncio.Transport)
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        transport.close()


class CappedSite(web.BaseSite):
    """web.TCPSite with a ConnectionCap in front of aiohttp's protocol factory."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, max_connections: int) -> None:
        super().__init__(runner)
        self._host, self._port, self._max_connections = host, port, max_connections
        self.cap: ConnectionCap | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self.cap = ConnectionCap(server, self._max_connections)
        self._server = await asyncio.get_running_loop().create_server(
            self.cap, self._host, self._port, reuse_address=True)


class ApiServer:
    """The API listening on host:port; `close` ends event streams and waits briefly for requests in flight."""

    def __init__(self, runner: web.AppRunner) -> None:
        self.runner = runner

    @classmethod
    async def start(cls, ctx: ApiContext, host: str, port: int, *, shutdown_timeout_s: float = 5.0,
                    max_connections: int = MAX_CONNECTIONS, idle_timeout_s: float = IDLE_TIMEOUT_S) -> ApiServer:
        """Serve on host:port. `idle_timeout_s` closes a connection that sends no complete request head for that
        long (slowloris) or idles between requests; past `max_connections` see ConnectionCap."""
        runner = web.AppRunner(make_app(ctx), access_log=None, shutdown_timeout=shutdown_timeout_s,
                               keepalive_timeout=idle_timeout_s)
        await runner.setup()
        try:
            await CappedSite(runner, host, port, max_connections).start()
        except BaseException:
            await runner.cleanup()
            raise
        server = cls(runner)
        log.info("api.listening", host=host, port=server.port, auth=ctx.current_token() is not None)
        return server

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        address = self.runner.addresses[0]
        return int(address[1])

    async def close(self) -> None:
        await self.runner.cleanup()
