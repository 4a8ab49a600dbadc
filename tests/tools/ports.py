"""A port on 127.0.0.1 where nothing listens, and nothing can start listening while the tests run."""

from __future__ import annotations

import atexit
import socket

_HELD: list[socket.socket] = []
atexit.register(lambda: [sock.close() for sock in _HELD])


def refused_port() -> int:
    """A port that refuses every connection: bound by this process and never listened on, for the rest of the
    session. A port that was merely free a moment ago may be taken meanwhile by another server (another xdist
    worker's double, another test run on the machine), which then answers where a refusal was expected."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    _HELD.append(sock)
    port: int = sock.getsockname()[1]
    return port
