"""sd_notify: tell systemd we are ready, reloading, stopping, alive, and what we are doing.

A datagram to $NOTIFY_SOCKET (a path, or an abstract socket when it starts with '@'). Without the variable
every call is a no-op, so the daemon calls these unconditionally.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable


class Notifier:
    """One datagram socket to systemd's notify socket, opened lazily."""

    def __init__(self, address: str | None = None) -> None:
        raw = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + raw[1:] if raw.startswith("@") else raw
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *fields: str) -> bool:
        """Send `KEY=value` lines; returns whether a datagram went out. Never raises."""
        if not self.enabled:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload); older ones ignore it.
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s(environ: dict[str, str] | None = None) -> float | None:
    """Half of $WATCHDOG_USEC in seconds (systemd's advice), or None when no watchdog is armed for us."""
    env = environ if environ is not None else dict(os.environ)
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2 / 1_000_000
    except ValueError:
        return None


async def heartbeat(notifier: Notifier, status: Callable[[], str], healthy: Callable[[], bool],
                    watchdog_s: float | None = None) -> None:
    """Tell systemd how we are every few seconds (STATUS=); ping the watchdog only while `healthy()` (the loop
    and the scheduler keep time), so a stuck daemon is restarted. Runs until cancelled."""
    if watchdog_s is None:
        watchdog_s = watchdog_interval_s()
    period = min(watchdog_s or 5.0, 5.0)
    while True:
        notifier.status(status())
        if watchdog_s is not None and healthy():
            notifier.watchdog()
        await asyncio.sleep(period)
