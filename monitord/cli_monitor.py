"""`monitord monitor`: provider status from the daemon, live. A table on a terminal; one line per provider and per
event when the output is not a terminal (or NDJSON with --json); a single snapshot with --once.

The connection line says what is true: connecting, live (the event stream is open), polling (the API answers but
the stream does not), or unreachable; every state names the URL and, when it failed, why.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from monitord.text import safe_text

if TYPE_CHECKING:
    from rich.console import Console, Group

    from monitord.client import MonitordClient, ServerEvent

REFRESH_S = 2.0  # latency and availability move without events: the providers are refetched this often
RETRY_S = 2.0


class Link(enum.StrEnum):
    CONNECTING = "connecting"
    LIVE = "live"  # the event stream is open
    POLLING = "polling"  # the API answers, the event stream does not
    UNREACHABLE = "unreachable"


class View:
    """What the monitor knows: the providers, the recent events and the state of the connection."""

    def __init__(self, provider: str | None) -> None:
        self.provider = provider
        self.providers: Sequence[Mapping[str, Any]] = ()
        self.at = datetime.now(UTC)
        self.events: deque[str] = deque(maxlen=10)
        self.link = Link.CONNECTING
        self.problem: str | None = None

    def shown(self) -> list[Mapping[str, Any]]:
        return [p for p in self.providers if self.provider is None or p["name"] == self.provider]

    def note(self, url: str) -> str:
        text = {Link.CONNECTING: f"connecting to {url}",
                Link.LIVE: f"live: following events from {url}",
                Link.POLLING: f"polling {url} every {REFRESH_S:g} s: the event stream is down",
                Link.UNREACHABLE: f"{url} does not answer; retrying every {RETRY_S:g} s"}[self.link]
        return f"{text} ({self.problem})" if self.problem and self.link is not Link.LIVE else text


def describe_event(event: ServerEvent) -> str:
    data = event.data
    if event.kind == "provider.status_changed":
        error = f" ({data['error_class']}: {data['error']})" if data.get("error_class") else ""
        return f"{data['at']}  {data['provider']}: {data['previous']} -> {data['current']}{error}"
    if event.kind == "ranking.best_changed":
        return f"{data['at']}  best provider: {data['previous'] or '-'} -> {data['current'] or '-'}"
    if event.kind == "generation.updated":
        return _describe_generation(data)
    return f"{event.kind}"


def _describe_generation(data: Mapping[str, Any]) -> str:
    """One canary sample's effect: the model's TTFT and tokens/s now, or what went wrong with this sample."""
    from monitord.cli import generation_cells

    at, where = data.get("last_sample_at"), f"{data['provider']}/{data['model']}"
    if at == data.get("last_error_at") and data.get("last_error_class"):
        return f"{at}  {where}: canary failed ({data['last_error_class']})"
    if at == data.get("last_skip_at") and data.get("last_skip_class"):
        return f"{at}  {where}: canary skipped ({data['last_skip_class']})"
    ttft, tps = generation_cells(data)
    return f"{at}  {where}: TTFT p50 {ttft}, {tps} tok/s"


def provider_line(p: Mapping[str, Any], now: datetime) -> str:
    from monitord.cli import current_error, for_text, generation_cells, measured

    error = current_error(p, now)
    stats = measured(p.get("generation"))
    speed = "  TTFT {} {} tok/s".format(*generation_cells(stats)) if stats is not None else ""
    return (f"{p['name']}  {p['status']}  for {for_text(p.get('since'), now)}{speed}"
            f"{f'  {error}' if error else ''}")


async def monitor(client: MonitordClient, provider: str | None, *, console: Console | None = None,
                  out: TextIO = sys.stdout, as_json: bool = False, once: bool = False,
                  plain: bool | None = None) -> int:
    """Run until cancelled (Ctrl-C), or print one snapshot with `once`. Returns the exit code."""
    from monitord.client import ClientError

    view = View(provider)
    plain = plain if plain is not None else (as_json or not out.isatty())
    emit = _Emitter(out, as_json, client.base_url)
    async with client:
        if once:
            try:
                answer = await client.providers()
            except ClientError as exc:
                print(f"monitord: {client.base_url} did not answer: {safe_text(exc)}", file=sys.stderr)
                return 1
            view.providers, view.at = answer.providers, answer.generated_at
            emit.snapshot(view)
            return 0
        if plain:
            return await _follow(client, view, emit.snapshot, emit.event, emit.link)
        return await _live(client, view, console)


async def _follow(client: MonitordClient, view: View, on_snapshot: Callable[[View], None],
                  on_event: Callable[[ServerEvent], None], on_link: Callable[[View], None]) -> int:
    """The loop both modes share: a snapshot, then events; snapshots again after a reconnect and every REFRESH_S
    (the plain mode prints a snapshot only when the link changes, so a pipe gets changes, not noise)."""
    from monitord.client import ClientError

    async def fetch() -> bool:
        try:
            answer = await client.providers()
        except ClientError as exc:
            view.problem = safe_text(exc)
            return False
        view.providers, view.at = answer.providers, answer.generated_at
        return True

    def set_link(link: Link) -> None:
        if link is not view.link:
            view.link = link
            on_link(view)

    last_id: int | None = None
    while True:
        if await fetch():
            on_snapshot(view)

        def opened() -> None:
            view.problem = None
            set_link(Link.LIVE)

        try:
            async for event in client.events((view.provider,) if view.provider else (), last_event_id=last_id,
                                             on_open=opened):
                last_id = event.id if event.id is not None else last_id
                await fetch()
                on_event(event)
            view.problem = "the daemon closed the event stream"
        except ClientError as exc:
            view.problem = safe_text(exc)
        set_link(Link.POLLING if await fetch() else Link.UNREACHABLE)
        await asyncio.sleep(RETRY_S)


async def _live(client: MonitordClient, view: View, console: Console | None) -> int:
    from rich.console import Console, Group
    from rich.live import Live
    from rich.text import Text

    from monitord.cli import health_table, plain

    def render() -> Group:
        return Group(Text(view.note(client.base_url), style="dim" if view.link is Link.LIVE else "yellow"),
                     health_table(view.shown(), view.at),
                     *([Text("recent events:", style="bold")] if view.events else []),
                     *(plain(line) for line in view.events))

    with Live(render(), console=console or Console(), refresh_per_second=4, transient=False) as live:

        def event(e: ServerEvent) -> None:
            view.events.appendleft(describe_event(e))
            live.update(render())

        async def poll() -> None:
            from monitord.client import ClientError

            while True:
                await asyncio.sleep(REFRESH_S)
                with contextlib.suppress(ClientError):
                    answer = await client.providers()
                    view.providers, view.at = answer.providers, answer.generated_at
                live.update(render())

        poller = asyncio.create_task(poll())
        try:
            return await _follow(client, view, lambda _: live.update(render()), event, lambda _: live.update(render()))
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller


class _Emitter:
    """Plain lines (or NDJSON) for a pipe or a log file: a snapshot, then events and link changes as they come."""

    def __init__(self, out: TextIO, as_json: bool, url: str) -> None:
        self.out = out
        self.as_json = as_json
        self.url = url

    def _write(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def snapshot(self, view: View) -> None:
        if self.as_json:
            self._write(orjson.dumps({"kind": "snapshot", "at": view.at.isoformat(),
                                      "providers": view.shown()}).decode())
            return
        for p in view.shown():
            self._write(f"{view.at.isoformat()}  {safe_text(provider_line(p, view.at))}")

    def event(self, event: ServerEvent) -> None:
        if self.as_json:
            self._write(orjson.dumps({"kind": event.kind, "id": event.id, "data": event.data}).decode())
        else:
            self._write(safe_text(describe_event(event)))

    def link(self, view: View) -> None:
        if self.as_json:
            self._write(orjson.dumps({"kind": "connection", "state": view.link.value, "url": self.url,
                                      "problem": view.problem}).decode())
        else:
            self._write(f"{datetime.now(UTC).isoformat()}  # {view.note(self.url)}")
