"""WebhookReceiver: a real aiohttp server on 127.0.0.1 that records what monitord POSTs and can be told to fail.

    async with WebhookReceiver() as receiver:
        receiver.fail(500, times=3)                  # the next three requests get 500, then the default (200)
        receiver.rate_limit("2", times=1)            # 429 with Retry-After: 2
        receiver.reject(400)                         # every request from now on gets 400
        receiver.slow(1.0)                           # answer after 1 s (planned replies keep their turn)
        receiver.answer_when(lambda body, headers: b'"gpu"' in body, Reply(500))   # by content, before any plan
        await receiver.down(); await receiver.up()   # connection refused, then back on the same port
        got = await receiver.wait_for(2)             # the first two requests, or TimeoutError

Requests are recorded on arrival with their raw body and headers, so signatures can be checked byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from monitord.alerts.signing import verify


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer the receiver gives: status, body, headers, after `delay_s`."""

    status: int = 200
    body: bytes = b"ok"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    method: str
    path: str
    headers: Mapping[str, str]  # lower-cased names
    body: bytes  # raw, exactly as sent
    received_at: float  # time.monotonic()
    reply_status: int  # what the receiver answered (or was about to, for a client that gave up)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def delivered(self) -> bool:
        return 200 <= self.reply_status < 300

    def signature_valid(self, secret: str, now_s: float | None = None) -> bool:
        timestamp, signature = self.header("X-Monitord-Timestamp"), self.header("X-Monitord-Signature")
        if timestamp is None or signature is None:
            return False
        return verify(secret, timestamp, self.body, signature, now_s=now_s)


class WebhookReceiver:
    """See the module docstring. The port is chosen once and kept across down()/up()."""

    def __init__(self, *, path: str = "/hook", default: Reply | None = None, host: str = "127.0.0.1") -> None:
        self.path = path
        self.default = default or Reply()
        self.requests: list[ReceivedRequest] = []
        self._host = host
        self._port = 0
        self._plan: deque[Reply] = deque()
        self._rules: list[tuple[Callable[[bytes, Mapping[str, str]], bool], Reply]] = []
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests it was answering at once
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Condition()
        self._released = asyncio.Event()  # set on down/stop: slow handlers answer at once

    # -- lifecycle -------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("receiver not started")
        return f"http://{self._host}:{self._port}{self.path}"

    @property
    def listening(self) -> bool:
        return self._runner is not None

    async def start(self) -> WebhookReceiver:
        if not self._port:
            self._port = _free_port(self._host)
        await self.up()
        return self

    async def up(self) -> None:
        """Listen (again) on the same port."""
        if self._runner is not None:
            return
        self._released = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port, reuse_address=True).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def down(self) -> None:
        """Stop listening: new connections are refused until up()."""
        self._released.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def stop(self) -> None:
        await self.down()

    async def __aenter__(self) -> WebhookReceiver:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    # -- behaviour -------------------------------------------------------------------------------------------

    def plan(self, reply: Reply, times: int = 1) -> None:
        """Answer the next `times` requests with `reply` (after any replies planned before)."""
        self._plan.extend([reply] * times)

    def fail(self, status: int = 500, *, times: int = 1, body: bytes = b"internal error") -> None:
        self.plan(Reply(status, body), times)

    def rate_limit(self, retry_after: str, *, times: int = 1) -> None:
        """429 with `Retry-After: <retry_after>` (seconds or an HTTP date)."""
        self.plan(Reply(429, b'{"message": "You are being rate limited."}', {"Retry-After": retry_after}), times)

    def reject(self, status: int = 400, body: bytes = b"invalid_payload") -> None:
        """Every request from now on gets `status`."""
        self._plan.clear()
        self.default = Reply(status, body)

    def slow(self, delay_s: float) -> None:
        """Every answer from now on comes after `delay_s` (or at once when the receiver goes down)."""
        self.default = Reply(self.default.status, self.default.body, self.default.headers, delay_s)

    def answer_when(self, matches: Callable[[bytes, Mapping[str, str]], bool], reply: Reply) -> None:
        """Requests whose (raw body, lower-cased headers) match get `reply`, ahead of planned and default replies."""
        self._rules.append((matches, reply))

    def answer(self, reply: Reply) -> None:
        """The default answer from now on (e.g. Reply(204, b"") like Discord)."""
        self.default = reply

    # -- observations ----------------------------------------------------------------------------------------

    def delivered(self) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.delivered]

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> list[ReceivedRequest]:
        """The first `count` requests once they have arrived; TimeoutError otherwise."""
        async with asyncio.timeout(timeout_s), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)
        return self.requests[:count]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        ruled = next((reply for matches, reply in self._rules if matches(body, headers)), None)
        reply = ruled or (self._plan.popleft() if self._plan else self.default)
        self.requests.append(ReceivedRequest(request.method, request.path, headers, body, time.monotonic(),
                                             reply.status))
        async with self._arrived:
            self._arrived.notify_all()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if reply.delay_s:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._released.wait(), reply.delay_s)
        finally:
            self.in_flight -= 1
        return web.Response(status=reply.status, body=reply.body or None, headers=dict(reply.headers))


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
