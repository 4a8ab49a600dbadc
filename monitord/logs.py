"""structlog set-up: JSON lines under systemd or when piped, readable console output on a terminal.

Not named logging.py, which would shadow the standard library. A last processor masks any field whose name
says it holds a secret, so a careless `log.info(..., api_key=...)` still prints `***`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["auto", "json", "console"]

_SECRET_WORDS = ("api_key", "apikey", "authorization", "token", "secret", "password", "signature")


def _mask_secrets(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event:
        if any(word in key.lower() for word in _SECRET_WORDS) and event[key] is not None:
            event[key] = "***"
    return event


def _dotted_foreign(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A line from a library's stdlib logger (APScheduler, Alembic, asyncio) gets a dotted event name like ours:
    `<library>.<level>` ("alembic.warning"), its text in `message` and the logger's full name in `logger`."""
    record = event.get("_record")
    if record is not None and isinstance(record, logging.LogRecord):
        event["message"] = event.get("event")
        event["logger"] = record.name
        event["event"] = f"{record.name.split('.')[0]}.{record.levelname.lower()}"
    return event


def wants_json(fmt: LogFormat, stream: TextIO) -> bool:
    """JSON for journald (JOURNAL_STREAM is set by systemd) and pipes; console for a person at a terminal."""
    if fmt != "auto":
        return fmt == "json"
    return bool(os.environ.get("JOURNAL_STREAM")) or not stream.isatty()


class _OneLineAtATime:
    """The stream both structlog and stdlib logging write to, one whole line per write under one lock: a line
    from another thread (aiosqlite's worker logs at debug) never lands inside one of ours."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            written = self.stream.write(text)
            self.stream.flush()
            return written

    def flush(self) -> None:
        with self._lock:
            self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()


_min_level = logging.NOTSET  # what configure() last set; unconfigured structlog prints every level


def debug_enabled() -> bool:
    """Whether debug lines are printed now. Hot paths (a line per probe) ask first: a filtered call through
    structlog's lazy proxy still binds a logger and builds its fields, about 9 µs each."""
    return _min_level <= logging.DEBUG


def configure(level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog (and route stdlib logging, e.g. APScheduler's, through the same output).

    May be called again (a reload of logging.level / logging.format): the new set-up replaces the old one.
    """
    out = stream or sys.stderr
    serialized = _OneLineAtATime(out)
    numeric = logging.getLevelName(level.upper())
    global _min_level
    _min_level = numeric
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _mask_secrets,
    ]
    renderer: Any
    if wants_json(fmt, out):
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(serialized),  # type: ignore[arg-type]  # a file-like
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(serialized)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(processors=[
        structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[*shared, _dotted_foreign]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO) if level != "debug" else logging.DEBUG)
    # APScheduler is chatty at INFO ("Running job ..."): keep it to warnings unless debugging.
    quiet = logging.DEBUG if level == "debug" else max(logging.WARNING, numeric)
    logging.getLogger("apscheduler").setLevel(quiet)
    # Alembic's own INFO lines ("Context impl ...", "Running upgrade ...") are replaced by our migration.* events.
    logging.getLogger("alembic").setLevel(quiet)
