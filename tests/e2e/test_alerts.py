"""Webhook alerts through the real daemon subprocess: one `provider.down` and one `provider.up`, signed; an event
whose receiver was away while monitord restarted is delivered after the restart with the same delivery id."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.doubles.base import ProviderDouble
from tests.doubles.webhook_receiver import WebhookReceiver
from tests.e2e.test_run import start_monitord, stop, write_config

pytestmark = pytest.mark.e2e

SECRET = "whsec-e2e-test"


def alerts_section(receiver: WebhookReceiver, *, failure_threshold: int = 3, success_threshold: int = 2) -> str:
    return (f"alerts:\n  failure_threshold: {failure_threshold}\n  success_threshold: {success_threshold}\n"
            f"  webhooks:\n    - name: ops\n      url: {receiver.url}\n      secret: {SECRET}\n      timeout: 2s\n")


def provider_events(receiver: WebhookReceiver) -> list[tuple[str, str]]:
    return [(r.header("X-Monitord-Event") or "", r.json()["provider"]["name"]) for r in receiver.requests
            if (r.header("X-Monitord-Event") or "").startswith("provider.")]


async def wait_until(predicate: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_down_then_up_sends_exactly_one_of_each_signed(tmp_path: Path, db_url: str,
                                                             provider_double: Any) -> None:
    double: ProviderDouble = await provider_double("llamacpp")
    async with WebhookReceiver() as receiver:
        config = write_config(tmp_path / "monitord.yaml", {"gpu1": ("llamacpp", double.url)}, db_url,
                              interval="500ms", extra=alerts_section(receiver))
        proc = await start_monitord("run", "-c", str(config))
        try:
            # Up and steady: the daemon has started (imports, migrations) and probed successfully twice.
            await wait_until(lambda: sum(r.path == "/health" for r in double.requests) >= 2)
            assert provider_events(receiver) == []
            killed_at = time.monotonic()
            await double.set("down")
            await wait_until(lambda: ("provider.down", "gpu1") in provider_events(receiver))
            detected_s = next(r.received_at for r in receiver.requests
                              if r.header("X-Monitord-Event") == "provider.down") - killed_at
            await double.set("up")
            await wait_until(lambda: ("provider.up", "gpu1") in provider_events(receiver))
            await asyncio.sleep(1.5)  # nothing more should come: longer than the dispatcher's 1 s poll
        finally:
            code, _, stderr = await stop(proc)
        assert code == 0, stderr
        assert provider_events(receiver) == [("provider.down", "gpu1"), ("provider.up", "gpu1")]
        for request in receiver.requests:
            assert request.signature_valid(SECRET), request.headers
            assert request.header("X-Monitord-Delivery") == request.json()["id"]
        up = next(r.json() for r in receiver.requests if r.header("X-Monitord-Event") == "provider.up")
        assert up["down_for_s"] > 0
        # interval 500 ms x threshold 3 + delivery: the bound is interval x threshold + 1 s (+ slack for CI).
        assert detected_s < 6.0, detected_s
        print(f"\ndown -> webhook: {detected_s:.2f} s (interval 500 ms, failure_threshold 3)")


async def test_event_survives_a_restart_while_the_receiver_is_away(tmp_path: Path, sqlite_url: str,
                                                                   provider_double: Any) -> None:
    double: ProviderDouble = await provider_double("ollama")
    async with WebhookReceiver() as receiver:
        await receiver.down()
        config = write_config(tmp_path / "monitord.yaml", {"box": ("ollama", double.url)}, sqlite_url,
                              interval="300ms", extra=alerts_section(receiver, failure_threshold=1))
        proc = await start_monitord("run", "-c", str(config))
        await wait_until(lambda: any(r.path == "/api/tags" for r in double.requests))
        await double.set("down")
        await asyncio.sleep(1.5)  # the down event is raised and stored, delivery keeps failing
        code, events, stderr = await stop(proc)
        assert code == 0, stderr
        assert any(e["event"] == "alert.raised" and e["type"] == "provider.down" for e in events)
        assert receiver.requests == []

        await receiver.up()
        proc = await start_monitord("run", "-c", str(config))
        try:
            await wait_until(lambda: any(r.header("X-Monitord-Event") == "provider.down" for r in receiver.requests))
        finally:
            code, _, stderr = await stop(proc)
        assert code == 0, stderr
        downs = [r for r in receiver.requests if r.header("X-Monitord-Event") == "provider.down"]
        assert len(downs) == 1 and downs[0].signature_valid(SECRET)
        assert len({r.header("X-Monitord-Delivery") for r in receiver.requests}) == len(receiver.requests)
