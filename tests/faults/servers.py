"""Misbehaving servers on real sockets: each speaks just enough (or too little) HTTP to break a probe one way.

A FaultServer accepts TCP on 127.0.0.1 and hands every connection to a `Behaviour`; the behaviours below build
the faults by hand (resets with SO_LINGER 0, lying Content-Length, trickled bytes, gzip bombs), which aiohttp's
own server would refuse to produce.
"""

from __future__ import annotations

import asyncio
import functools
import html
import socket
import struct
import urllib.parse
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

Behaviour = Callable[["Exchange"], Awaitable[None]]

_REASONS = {200: "OK", 302: "Found", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            500: "Internal Server Error", 429: "Too Many Requests",
            503: "Service Unavailable"}
_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class RawRequest:
    method: str
    path: str
    headers: Mapping[str, str]  # lower-cased names


@dataclass(eq=False)
class Exchange:
    """One accepted connection, with helpers to answer well or badly."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    server: FaultServer

    async def read_request(self) -> RawRequest | None:
        """The request head (probes send no body on GET); None when the client went away first."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, path, _version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        request = RawRequest(method, path, headers)
        self.server.requests.append(request)
        return request

    async def write(self, data: bytes) -> None:
        if self.server.closing.is_set():
            raise ConnectionAbortedError("server closing")
        self.writer.write(data)
        await self.writer.drain()

    async def send_head(self, status: int, headers: Iterable[tuple[str, str]] = (), *, close: bool = True) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Whatever')}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if close:
            lines.append("Connection: close")
        await self.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def send(self, status: int, body: bytes = b"", *, content_type: str = "application/json",
                   headers: Iterable[tuple[str, str]] = (), close: bool = True) -> None:
        """A well-formed response; `close` ends the connection so every probe opens a new one."""
        head = [("Content-Type", content_type), ("Content-Length", str(len(body))), *headers]
        await self.send_head(status, head, close=close)
        await self.write(body)

    def reset(self) -> None:
        """Abort with a TCP RST instead of a FIN: SO_LINGER on, timeout 0, then close."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


@dataclass(eq=False)
class FaultServer:
    """`await start()`, point a provider at `url`, read `connections` / `requests`, `await close()`."""

    behaviour: Behaviour
    host: str = "127.0.0.1"
    connections: int = 0
    requests: list[RawRequest] = field(default_factory=list)
    _server: asyncio.Server | None = None
    closing: asyncio.Event = field(default_factory=asyncio.Event)  # releases hung behaviours
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    async def start(self) -> FaultServer:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            await self.behaviour(Exchange(reader, writer, self))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the probe gave up or the behaviour broke the connection on purpose
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()

    async def close(self) -> None:
        """Stop accepting, release every behaviour and drop its connection. Handler tasks are not cancelled:
        asyncio's stream server logs an error for a cancelled client_connected_cb task on Python 3.11."""
        if self._server is not None:
            self._server.close()
        self.closing.set()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


async def _until_closed(ex: Exchange) -> None:
    await ex.server.closing.wait()


# -- behaviours: answers that are HTTP-correct but wrong for a probe ------------------------------------------

MODELS_BODY = b'{"object": "list", "data": [{"id": "m1", "object": "model"}]}'


def answer(status: int, body: bytes = MODELS_BODY, *, content_type: str = "application/json",
           headers: Iterable[tuple[str, str]] = ()) -> Behaviour:
    """The same complete response to every request; the connection closes after it."""
    extra = tuple(headers)

    async def behaviour(ex: Exchange) -> None:
        if await ex.read_request() is not None:
            await ex.send(status, body, content_type=content_type, headers=extra)

    return behaviour


def redirect_loop() -> Behaviour:
    """302 to a new path on every request, forever."""

    async def behaviour(ex: Exchange) -> None:
        request = await ex.read_request()
        if request is not None:
            hop = len(ex.server.requests)
            await ex.send(302, b"", content_type="text/plain", headers=[("Location", f"/loop/{hop}")])

    return behaviour


# -- behaviours: broken transports -----------------------------------------------------------------------------


def reset_mid_body() -> Behaviour:
    """Headers promise 5000 bytes; 20 arrive, then a TCP RST."""

    async def behaviour(ex: Exchange) -> None:
        if await ex.read_request() is None:
            return
        await ex.send_head(200, [("Content-Type", "application/json"), ("Content-Length", "5000")])
        await ex.write(b'{"object": "list", "data": [')
        await asyncio.sleep(0.02)  # let the client take the headers, so the reset lands mid-body
        ex.reset()

    return behaviour


def hang_after_headers() -> Behaviour:
    """Headers, then nothing: the body never comes and the connection stays open."""

    async def behaviour(ex: Exchange) -> None:
        if await ex.read_request() is None:
            return
        await ex.send_head(200, [("Content-Type", "application/json"), ("Content-Length", "100")])
        await _until_closed(ex)

    return behaviour


def trickle(*, byte_interval_s: float, headers_too: bool = False) -> Behaviour:
    """Slowloris: one byte at a time, each well inside any per-read timeout, so only a whole-probe deadline
    ends it. `headers_too` trickles the status line and headers as well."""
    body = MODELS_BODY
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()

    async def behaviour(ex: Exchange) -> None:
        if await ex.read_request() is None:
            return
        if not headers_too:
            await ex.write(head)
        for byte in (head if headers_too else b"") + body:
            await ex.write(bytes([byte]))
            await asyncio.sleep(byte_interval_s)

    return behaviour


def big_body(size_bytes: int, *, declared: bool) -> Behaviour:
    """A valid JSON model list of `size_bytes`, streamed from one small chunk so this process's memory
    stays flat. `declared`: Content-Length says the size; else chunked, and only counting can catch it."""
    pad = b" " * _CHUNK

    async def behaviour(ex: Exchange) -> None:
        if await ex.read_request() is None:
            return
        prefix, suffix = b'{"object": "list", "data": [', b"]}"
        pads = (size_bytes - len(prefix) - len(suffix)) // _CHUNK
        if declared:
            length = len(prefix) + pads * _CHUNK + len(suffix)
            await ex.send_head(200, [("Content-Type", "application/json"), ("Content-Length", str(length))])
            await ex.write(prefix)
            for _ in range(pads):
                await ex.write(pad)
            await ex.write(suffix)
            return
        await ex.send_head(200, [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")])
        for part in (prefix, *([pad] * pads), suffix):
            await ex.write(b"%x\r\n%s\r\n" % (len(part), part))
        await ex.write(b"0\r\n\r\n")

    return behaviour


@functools.cache
def _gzip_json_list(decompressed_bytes: int) -> bytes:
    """Compressed a chunk at a time (no large buffer ever exists here), once per size per session."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip container
    parts = [compressor.compress(b'{"object": "list", "data": [')]
    pad = b" " * _CHUNK
    parts += [compressor.compress(pad) for _ in range(decompressed_bytes // _CHUNK)]
    parts += [compressor.compress(b"]}"), compressor.flush()]
    return b"".join(parts)


def gzip_bomb(decompressed_bytes: int) -> Behaviour:
    """A small gzip body (honest Content-Length) that inflates to a valid JSON list of `decompressed_bytes`."""
    compressed = _gzip_json_list(decompressed_bytes)

    async def behaviour(ex: Exchange) -> None:
        if await ex.read_request() is not None:
            await ex.send(200, compressed, headers=[("Content-Encoding", "gzip")])

    return behaviour


def accept_and_close() -> Behaviour:
    """Accepts the TCP connection and closes it before reading a byte."""

    async def behaviour(ex: Exchange) -> None:
        ex.writer.close()

    return behaviour


def garbage() -> Behaviour:
    """Not HTTP at all: the endpoint points at an SSH server."""

    async def behaviour(ex: Exchange) -> None:
        await ex.read_request()
        await ex.write(b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n\x00\x00\x01\x14\x0a\x14\xde\xad\xbe\xef")

    return behaviour


def content_length_lies(*, declared: int, body: bytes, then: str) -> Behaviour:
    """Content-Length says `declared` but `body` is sent. `then`: "close" the connection, "hang" it open, or
    "keep" it alive as if all was well (the extra bytes, if any, sit in front of the next response)."""

    async def behaviour(ex: Exchange) -> None:
        connection = "close" if then == "close" else "keep-alive"
        # one write: the client sees the lie in a single read, whatever the timing
        response = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n"
                    f"Connection: {connection}\r\n\r\n").encode() + body
        while await ex.read_request() is not None:
            await ex.write(response)
            if then == "close":
                return
            if then == "hang":
                await _until_closed(ex)

    return behaviour


def redirect_to(target: str, status: int = 302) -> Behaviour:
    """Every request is sent on to the same path under `target` (another origin, typically)."""

    async def behaviour(ex: Exchange) -> None:
        request = await ex.read_request()
        if request is not None:
            await ex.send(status, b"", content_type="text/plain", headers=[("Location", target + request.path)])

    return behaviour


def echo_request(status: int) -> Behaviour:
    """An error page that echoes the request line and headers, as web frameworks' default 404 pages and debug
    pages do (the path, the query, an Authorization header)."""

    async def behaviour(ex: Exchange) -> None:
        request = await ex.read_request()
        if request is not None:
            await ex.reader.readexactly(int(request.headers.get("content-length", "0")))
            echoed = "".join(f"<li>{name}: {value}</li>" for name, value in request.headers.items())
            body = (f"<h1>Not Found</h1><p>Cannot {request.method} {request.path}</p><ul>{echoed}</ul>"
                    f"<p>decoded: {urllib.parse.unquote(request.path)}</p>"
                    f'<a href="{html.escape(request.path)}">retry</a>')
            await ex.send(status, body.encode(), content_type="text/html")

    return behaviour
