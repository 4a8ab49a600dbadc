"""The status page in a real browser against the real daemon: every provider and its status, a live change within
2 s, the detail page's charts, the silence form, the token prompt. Screenshots go to docs/screenshots/.

The daemon probes provider doubles (real aiohttp servers); the browser is the system's Chromium. Waits poll the
page (Playwright's expect) up to a deadline; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from pathlib import Path

import pytest
from playwright.async_api import expect

from monitord.model import Status
from tests.browser.conftest import OpenPage, StartDaemon
from tests.e2e.test_demo import URL, start_demo
from tests.test_outage import eventually

LIVE_DEADLINE_MS = 2000  # the promise: a change is on the page within 2 s
# Where the demo screenshots go: a temporary directory by default, so a test run leaves the work tree clean;
# MONITORD_SCREENSHOTS=docs/screenshots refreshes the README's images.
SCREENSHOTS = Path(os.environ.get("MONITORD_SCREENSHOTS") or Path(tempfile.gettempdir()) / "monitord-screenshots")
EXPECTED = {"gpu": "up", "laptop": "up", "story": "up", "spare": "down", "old": "disabled"}


async def settled(running: object) -> None:
    daemon = running.daemon  # type: ignore[attr-defined]
    await eventually(lambda: daemon.first_round_done and all(
        daemon.live.get(name).status.value == status for name, status in EXPECTED.items() if name != "old"),
        what="every provider at its expected status")
    await daemon.store.flush()


async def test_overview_lists_every_provider_with_its_status(running_daemon: StartDaemon,
                                                             open_page: OpenPage) -> None:
    running = await running_daemon()
    await settled(running)
    opened = await open_page(f"{running.url}/")
    page = opened.page
    for name, status in EXPECTED.items():
        card = page.locator(f'article.card[data-provider="{name}"]')
        await expect(card).to_have_attribute("data-status", status)
        await expect(card.locator(".badge.status")).to_have_text(status)
    await expect(page.locator("#connection")).to_have_text("live")
    await expect(page.locator("#ranking tbody tr")).to_have_count(3)
    await expect(page.locator("#ranking .excluded li", has_text="spare")).to_be_visible()
    await expect(page.locator('article[data-provider="spare"] .last-error')).to_contain_text("refused")
    await expect(page.locator('article[data-provider="gpu"] .models li').first).to_be_visible()
    await expect(page.locator('article[data-provider="gpu"] svg.uptime rect')).to_have_count(24)
    await expect(page.locator("#alerts tbody tr", has_text="provider.down").filter(has_text="spare")).to_be_visible()
    await page.get_by_role("button", name="30d").focus()
    await page.keyboard.press("Enter")  # from the keyboard; focus stays on the button across the redraw
    await expect(page.locator('article[data-provider="gpu"] svg.uptime rect')).to_have_count(30)
    await expect(page.get_by_role("button", name="30d")).to_be_focused()
    await page.get_by_role("button", name="24h").click()
    phone = await open_page(f"{running.url}/", width=390, height=844, dark=True)
    await expect(phone.page.locator('article.card[data-provider="gpu"]')).to_be_visible()
    width = await phone.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px phone"
    assert opened.console_errors == [] and phone.console_errors == []


async def test_a_status_change_reaches_the_page_within_two_seconds(running_daemon: StartDaemon,
                                                                   open_page: OpenPage) -> None:
    running = await running_daemon()
    await settled(running)
    opened = await open_page(f"{running.url}/")
    page = opened.page
    card = page.locator('article.card[data-provider="laptop"]')
    await expect(card).to_have_attribute("data-status", "up")
    await expect(page.locator("#connection")).to_have_text("live")
    await running.doubles["laptop"].set("down")
    await eventually(lambda: running.daemon.live.get("laptop").status is Status.DOWN, what="laptop down")
    await expect(card).to_have_attribute("data-status", "down", timeout=LIVE_DEADLINE_MS)
    await running.doubles["laptop"].set("up")
    await eventually(lambda: running.daemon.live.get("laptop").status is Status.UP, what="laptop up again")
    await expect(card).to_have_attribute("data-status", "up", timeout=LIVE_DEADLINE_MS)
    assert opened.console_errors == []


async def test_the_detail_page_draws_its_charts(running_daemon: StartDaemon, open_page: OpenPage) -> None:
    running = await running_daemon()
    await settled(running)
    opened = await open_page(f"{running.url}/providers/gpu")
    page = opened.page
    await expect(page.locator(".detail-head h1")).to_have_text("gpu")
    charts = page.locator("figure.chart-box")
    latency = charts.filter(has_text="Latency")
    await expect(page.get_by_role("button", name="1h")).to_have_attribute("aria-pressed", "true")
    await expect(latency.locator("path.line")).not_to_have_count(0)  # every probe: total, ttfb, ...
    total = latency.locator("path.line").nth(await latency.locator("path.line").count() - 1)
    assert (await total.get_attribute("d") or "").count("L") >= 1  # a line through the probes
    await expect(page.locator("#models tbody tr").first).to_be_visible()
    await expect(page.locator("#samples tbody tr").first).to_be_visible()
    await page.get_by_role("button", name="24h").click()
    await expect(page.get_by_role("button", name="24h")).to_have_attribute("aria-pressed", "true")
    await expect(latency.locator("path.line")).to_have_count(2)  # per 5-minute bucket: average and p95
    await expect(charts.filter(has_text="Availability")).to_be_visible()
    missing = await open_page(f"{running.url}/providers/nobody")
    await expect(missing.page.locator("main .error")).to_contain_text("No provider is named nobody")
    assert opened.console_errors == []


async def test_the_silence_form_adds_and_ends_a_silence(running_daemon: StartDaemon, open_page: OpenPage) -> None:
    running = await running_daemon()
    await settled(running)
    opened = await open_page(f"{running.url}/")
    page = opened.page
    form = page.locator("#silence-form")
    await form.get_by_label("Provider").fill("spare")
    await form.get_by_label("For").select_option("14400")
    await form.get_by_label("Reason").fill("swapping the GPU")
    await form.get_by_role("button", name="Add silence").click()
    item = page.locator("ul.silences li", has_text="spare")
    await expect(item).to_contain_text("swapping the GPU")
    await expect(item.locator(".badge")).to_have_text("active")
    assert [s.provider for s in running.daemon.alerts.silences()] == ["spare"]
    await item.get_by_role("button", name="End the silence of spare").focus()
    await page.keyboard.press("Enter")  # keyboard only
    await expect(page.locator("ul.silences li")).to_have_count(0)
    assert list(running.daemon.alerts.silences()) == []
    assert opened.console_errors == []


async def test_with_a_token_the_page_asks_for_it_once(running_daemon: StartDaemon, open_page: OpenPage) -> None:
    token = "page-token-5be1"
    running = await running_daemon(token=token)
    await settled(running)
    opened = await open_page(f"{running.url}/")
    page = opened.page
    prompt = page.locator("#auth")
    await expect(prompt).to_be_visible()
    assert "gpu" not in await page.content()  # nothing shown before the token
    await page.get_by_label("API token").fill("wrong")
    await page.get_by_role("button", name="Use token").click()
    await expect(page.locator("#auth-error")).to_have_text("That token was refused; try again.")
    await page.get_by_label("API token").fill(token)
    await page.keyboard.press("Enter")
    await expect(page.locator('article.card[data-provider="gpu"]')).to_have_attribute("data-status", "up")
    await expect(page.locator("#connection")).to_have_text("live")
    await page.reload()  # the tab keeps the token: no second question
    await expect(page.locator('article.card[data-provider="gpu"]')).to_be_visible()
    await expect(prompt).to_be_hidden()
    assert await page.evaluate("sessionStorage.getItem('monitord.token')") == token


@pytest.mark.slow  # the demo plays at 3x until a server dies
async def test_screenshots_of_the_demo(open_page: OpenPage) -> None:
    """The README's screenshots: the demo mid-story (one server down, one slowed, alerts delivered)."""
    demo = await start_demo("--speed", "3")
    try:
        url = (await demo.wait_for(URL.pattern))[1]
        await demo.wait_for(r"alert +provider\.down story")
        opened = await open_page(f"{url}/", width=1280, height=900)
        page = opened.page
        await expect(page.locator('article.card[data-provider="story"]')).to_have_attribute("data-status", "down")
        down = page.locator("#alerts tbody tr", has_text="provider.down").filter(has_text="story")
        await expect(down).to_be_visible()
        box = page.locator('article.card[data-provider="box"]')
        await expect(box).to_have_attribute("data-status", "stalled")  # the canary caught it
        await expect(box.locator(".generation")).to_contain_text("TTFT")
        await expect(page.locator('article.card[data-provider="busy"] .capacity')).to_contain_text("slots 4/4 busy")
        await page.screenshot(path=SCREENSHOTS / "overview.png", full_page=True)
        detail = await open_page(f"{url}/providers/laptop", width=1280, height=900, dark=True)
        await expect(detail.page.locator("figure.chart-box").filter(has_text="Latency").locator("path.line"))\
            .not_to_have_count(0)
        await expect(detail.page.locator("#samples tbody tr").first).to_be_visible()
        charts = detail.page.locator("figure.chart-box")
        for title in ("Time to first token", "Tokens per second"):  # the canaries' own series
            await expect(charts.filter(has_text=title).locator("path.line")).not_to_have_count(0)
        await detail.page.screenshot(path=SCREENSHOTS / "provider.png", full_page=True)
        assert opened.console_errors == [] and detail.console_errors == []
    finally:
        if demo.proc.returncode is None:
            demo.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(demo.proc.communicate(), 30)
        if demo.proc.returncode is None:
            demo.proc.kill()
            await demo.proc.wait()
