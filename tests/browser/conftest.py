"""Browser fixtures: the system's Chromium (Debian package `chromium`), driven by Playwright; never a download.

`page_for(url)` opens a fresh page that records console errors and failed requests; every test checks them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from monitord.config import parse_config
from monitord.daemon import Daemon
from tests.doubles.base import ProviderDouble
from tests.doubles.webhook_receiver import WebhookReceiver
from tests.plugins.doubles import StartDouble

playwright_api = pytest.importorskip("playwright.async_api")

# Playwright's default 5 s for an expectation is short on a loaded 2-core CI (the daemon and Chromium share the
# cores with the rest of the suite); tests with a real deadline (a live update within 2 s) pass their own timeout.
playwright_api.expect.set_options(timeout=20_000)

CHROMIUM = os.environ.get("MONITORD_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@dataclass
class Opened:
    page: playwright_api.Page
    console_errors: list[str] = field(default_factory=list)


OpenPage = Callable[..., Awaitable[Opened]]


@pytest.fixture
async def open_page() -> AsyncIterator[OpenPage]:
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    async with playwright_api.async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            async def open_(url: str, *, width: int = 1280, height: int = 900, dark: bool = False) -> Opened:
                context = await browser.new_context(viewport={"width": width, "height": height},
                                                    color_scheme="dark" if dark else "light")
                page = await context.new_page()
                opened = Opened(page)
                page.on("console", lambda msg: opened.console_errors.append(msg.text) if msg.type == "error" else None)
                page.on("pageerror", lambda exc: opened.console_errors.append(f"uncaught: {exc}"))
                await page.goto(url)
                return opened

            yield open_
        finally:
            await browser.close()


@dataclass
class Running:
    """A started daemon over provider doubles, with one webhook receiver; `url` is its status page."""

    daemon: Any
    url: str
    doubles: dict[str, ProviderDouble]
    receiver: WebhookReceiver


StartDaemon = Callable[..., Awaitable[Running]]


@pytest.fixture
async def running_daemon(tmp_path: Path, provider_double: StartDouble) -> AsyncIterator[StartDaemon]:
    """Factory: `await running_daemon(token=None)`. gpu (llama.cpp), laptop (Ollama) and story (KoboldCpp) are up,
    spare (vLLM) is refused, old is disabled; probes every 200 ms, thresholds 1/1, one webhook."""
    started: list[Any] = []
    async with contextlib.AsyncExitStack() as stack:
        async def start(token: str | None = None) -> Running:
            receiver = await stack.enter_async_context(WebhookReceiver())
            doubles = {"gpu": await provider_double("llamacpp"), "laptop": await provider_double("ollama"),
                       "story": await provider_double("koboldcpp"), "spare": await provider_double("vllm", "down")}
            fast = "{timeout: 2s, max_retries: 0, probe_interval: 200ms}"  # a loaded CI may take a while
            lines = ["providers:"]
            lines += [f'  {name}: {{type: {d.provider_type}, endpoint: "{d.url}", parameters: {fast}}}'
                      for name, d in doubles.items()]
            lines += ['  old: {type: tgi, endpoint: "http://127.0.0.1:9", enabled: false}',
                      f'storage: {{url: "sqlite+aiosqlite:///{tmp_path / "page.db"}", flush_interval: 50ms}}',
                      "api:", '  listen: "127.0.0.1:0"']
            lines += [f'  token: "{token}"'] if token else []
            # spare is refused from its first probe: alert_never_up lets it page, so the page has an alert to show
            lines += ["alerts:", "  failure_threshold: 1", "  success_threshold: 1", "  alert_never_up: true",
                      f'  webhooks: [{{name: ops, url: "{receiver.url}"}}]']
            daemon = Daemon(parse_config("\n".join(lines) + "\n"), install_signal_handlers=False)
            await daemon.start()
            started.append(daemon)
            return Running(daemon, f"http://127.0.0.1:{daemon.api_port}", doubles, receiver)

        try:
            yield start
        finally:
            for daemon in reversed(started):
                await daemon.stop()
