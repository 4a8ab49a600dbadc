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
from monitord.api.errors import error_middleware
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


class ApiServer:
    """The API listening on host:port; `close` ends event streams and waits briefly for requests in flight."""

    def __init__(self, runner: web.AppRunner) -> None:
        self.runner = runner

    @classmethod
    async def start(cls, ctx: ApiContext, host: str, port: int, *, shutdown_timeout_s: float = 5.0) -> ApiServer:
        runner = web.AppRunner(make_app(ctx), access_log=None, shutdown_timeout=shutdown_timeout_s)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
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
