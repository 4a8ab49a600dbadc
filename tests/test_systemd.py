"""systemd.py: real datagrams on a real notify socket, path and abstract."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from monitord.systemd import Notifier, watchdog_interval_s


def receive(sock: socket.socket) -> str:
    sock.settimeout(2)
    return sock.recv(4096).decode()


def test_path_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        notifier = Notifier(path)
        assert notifier.ready("3 up, 1 down, best: vllm")
        assert receive(server) == "READY=1\nSTATUS=3 up, 1 down, best: vllm"
        assert notifier.watchdog() and receive(server) == "WATCHDOG=1"
        assert notifier.reloading() and receive(server).startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert notifier.stopping() and receive(server) == "STOPPING=1"
        notifier.close()


def test_abstract_socket() -> None:
    name = f"monitord-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        notifier = Notifier("@" + name)
        assert notifier.status("probing") and receive(server) == "STATUS=probing"
        notifier.close()


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not Notifier().enabled and not Notifier().ready()


def test_unreachable_socket_never_raises(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    assert notifier.ready() is False
    notifier.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "junk"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval_s(env) == expected
