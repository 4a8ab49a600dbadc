"""Runs the demo: simulated servers, a printing webhook receiver, the daemon on a temporary SQLite file, the story.

Everything it starts it stops, in reverse order, however it ends (Ctrl-C, SIGTERM, the story's end with
--exit-after-story, or an error); the temporary directory goes with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TextIO

import orjson
from aiohttp import web

from monitord.client import ClientError, MonitordClient
from monitord.config import parse_config
from monitord.daemon import Daemon, StartupError
from monitord.demo.servers import SimServer
from monitord.demo.story import CAST, SCRIPT, STORY_S, demo_config


class Printer:
    """Lines on the terminal, each stamped with the story's clock at speed 1 (so the times match the script)."""

    def __init__(self, out: TextIO, speed: float) -> None:
        self.out = out
        self.speed = speed
        self.started = time.monotonic()

    def __call__(self, kind: str, text: str) -> None:
        story_s = (time.monotonic() - self.started) * self.speed
        minutes, seconds = divmod(int(story_s), 60)
        print(f"[{minutes:02d}:{seconds:02d}] {kind:<7} {text}", file=self.out, flush=True)


@contextlib.asynccontextmanager
async def webhook_printer(say: Callable[[str, str], None]) -> AsyncIterator[str]:
    """A local webhook receiver that prints every alert the daemon delivers; yields its URL."""

    async def receive(request: web.Request) -> web.Response:
        try:
            event = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return web.Response(status=400)
        say("alert", describe_alert(event))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/alerts", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/alerts"
    finally:
        await runner.cleanup()


def describe_alert(event: dict[str, object]) -> str:
    provider = event.get("provider")
    name = provider.get("name") if isinstance(provider, dict) else None
    text = f"{event.get('type')}"
    if name:
        text += f" {name}"
    if event.get("previous_status") or event.get("status"):
        text += f": {event.get('previous_status') or '-'} -> {event.get('status') or '-'}"
    if event.get("error"):
        text += f" ({event.get('error_class')}: {event.get('error')})"
    if isinstance(event.get("down_for_s"), int | float):
        text += f", was not up for {event['down_for_s']:.0f} s"
    return text


async def follow_status(url: str, say: Callable[[str, str], None]) -> None:
    """Print every status change the daemon publishes on /v1/events (reconnecting if the stream ends)."""
    async with MonitordClient(url, max_stale_s=0) as client:
        last: int | None = None
        while True:
            try:
                async for event in client.events(last_event_id=last):
                    last = event.id if event.id is not None else last
                    data = event.data
                    if event.kind == "provider.status_changed":
                        error = f" ({data['error_class']}: {data['error']})" if data.get("error_class") else ""
                        say("status", f"{data['provider']}: {data['previous']} -> {data['current']}{error}")
                    elif event.kind == "ranking.best_changed":
                        say("best", f"best provider: {data['previous'] or '-'} -> {data['current'] or '-'}")
            except ClientError:
                pass
            await asyncio.sleep(0.5)


async def play(servers: dict[str, SimServer], speed: float, say: Callable[[str, str], None]) -> None:
    started = time.monotonic()
    for step in SCRIPT:
        delay = started + step.at_s / speed - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await servers[step.actor].set(step.phase)
        say("story", step.says)
    delay = started + STORY_S / speed - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def run_demo(*, speed: float = 1.0, port: int = 8765, exit_after_story: bool = False,
                   out: TextIO = sys.stdout) -> int:
    """The whole demo; returns the exit code. Ctrl-C (SIGINT) or SIGTERM ends it and cleans up."""
    say = Printer(out, speed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    servers = {actor.name: SimServer(actor.name, actor.kind, actor.model) for actor in CAST}
    try:
        async with contextlib.AsyncExitStack() as stack:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="monitord-demo-")))
            for server in servers.values():
                stack.push_async_callback(server.stop)
                await server.start()
            first = SCRIPT[0]
            if first.at_s == 0:  # the opening phase holds before the daemon's first probe
                await servers[first.actor].set(first.phase)
            hook = await stack.enter_async_context(webhook_printer(say))
            text = demo_config({name: s.url for name, s in servers.items()}, str(workdir / "demo.db"),
                               f"127.0.0.1:{port}", hook, speed)
            daemon = Daemon(parse_config(text), install_signal_handlers=False)
            stack.push_async_callback(daemon.stop)
            try:
                await daemon.start()
            except StartupError as exc:
                print(f"monitord demo: the daemon could not start: {exc}"
                      + (" (is another monitord on that port? --port 0 takes any free one)" if port else ""),
                      file=sys.stderr, flush=True)
                return 1
            url = f"http://127.0.0.1:{daemon.api_port}"
            print(f"monitord demo: status page at {url}/  (API {url}/v1/providers; Ctrl-C to stop)", file=out,
                  flush=True)
            print(f"  database {workdir / 'demo.db'} (removed at the end)", file=out, flush=True)
            for actor in CAST:
                print(f"  {actor.name:<7} {actor.kind:<9} {servers[actor.name].url}  {actor.role}", file=out,
                      flush=True)
            tasks = [asyncio.create_task(follow_status(url, say), name="demo.follow"),
                     asyncio.create_task(play(servers, speed, say), name="demo.story")]
            story = tasks[1]
            stack.push_async_callback(_cancel, tasks)
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait([waiter, story], return_when=asyncio.FIRST_COMPLETED)
            if story.done() and not stop.is_set():
                story.result()  # an error in the story ends the demo with it
                say("story", "the story is over" + ("" if exit_after_story else
                                                    "; the page stays up until Ctrl-C"))
                if not exit_after_story:
                    await waiter
            waiter.cancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print("monitord demo: stopped; servers, daemon and temporary database cleaned up", file=out, flush=True)
    return 0


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
