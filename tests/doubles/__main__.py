"""Serve provider doubles from the command line, for end-to-end tests and `monitord check --all` demos.

    python -m tests.doubles vllm:18000 localai ollama:11435 --scenario up

Prints one `<type> <url>` line per double, then `ready`. Lines on stdin switch scenarios at run time:
`<type> <scenario>` (or `all <scenario>`). Runs until SIGINT/SIGTERM or the end of stdin with --stdin-stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import stat
import sys

from tests.doubles import DOUBLES
from tests.doubles.base import DoubleControl, ProviderDouble, Scenario


def _parse_target(text: str) -> tuple[str, int]:
    provider_type, _, port = text.partition(":")
    if provider_type not in DOUBLES:
        raise argparse.ArgumentTypeError(f"unknown type {provider_type!r}; known: {', '.join(sorted(DOUBLES))}")
    return provider_type, int(port) if port else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.doubles", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", type=_parse_target, metavar="TYPE[:PORT]",
                        help="doubles to serve (port 0 or none: ephemeral); default: one of every type")
    parser.add_argument("--scenario", default="up", choices=[s.value for s in Scenario])
    parser.add_argument("--api-key", default=None, help="serve as if this key were configured")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--stdin-stops", action="store_true", help="stop when stdin closes")
    return parser


async def _stdin_reader() -> asyncio.StreamReader | None:
    """A non-blocking reader on stdin, or None when stdin cannot be watched (a regular file, /dev/null)."""
    mode = os.fstat(sys.stdin.fileno()).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or sys.stdin.isatty()):
        return None  # epoll cannot watch regular files or /dev/null
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (OSError, ValueError):
        return None
    return reader


async def _read_commands(doubles: dict[str, ProviderDouble], stop: asyncio.Event, stdin_stops: bool) -> None:
    reader = await _stdin_reader()
    if reader is None:
        return
    while not stop.is_set():
        line = (await reader.readline()).decode()
        if not line:
            if stdin_stops:
                stop.set()
            return
        name, _, scenario = line.strip().partition(" ")
        targets = list(doubles.values()) if name == "all" else [doubles[name]] if name in doubles else []
        try:
            for double in targets:
                await double.set(scenario.strip())
        except ValueError:
            print(f"error unknown scenario {scenario.strip()!r}", flush=True)
            continue
        print(f"ok {name} {scenario.strip()}" if targets else f"error unknown double {name!r}", flush=True)


async def serve(args: argparse.Namespace) -> None:
    targets = args.targets or [(provider_type, 0) for provider_type in sorted(DOUBLES)]
    doubles: dict[str, ProviderDouble] = {}
    for provider_type, port in targets:
        key = provider_type if provider_type not in doubles else f"{provider_type}#{len(doubles)}"
        control = DoubleControl(scenario=Scenario(args.scenario), api_key=args.api_key)
        doubles[key] = ProviderDouble(provider_type, DOUBLES[provider_type], control, host=args.host, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        for key, double in doubles.items():
            await double.start()
            print(f"{key} {double.url}", flush=True)
        print("ready", flush=True)
        reader = asyncio.create_task(_read_commands(doubles, stop, args.stdin_stops))
        await stop.wait()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    finally:
        for double in doubles.values():
            await double.stop()


def main() -> int:
    asyncio.run(serve(_parser().parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
