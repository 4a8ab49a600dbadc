"""Secrets against servers that try to take them: a provider that redirects to another origin, and a webhook
receiver whose error page echoes the request (path, query, Authorization) back.

Issue 14, items 9 (no configured header or key crosses origins) and 11 (no webhook credential in stored or
logged errors, whatever the receiver echoes).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from structlog.testing import capture_logs

from monitord.config import parse_config
from monitord.daemon import Daemon
from monitord.model import Status
from tests.faults import servers
from tests.faults.conftest import DaemonHarness, Provider, StartServer, state_of
from tests.test_cli import monitord
from tests.test_outage import eventually

HEADER_SECRET = "hdr-secret-0001"
API_KEY = "key-secret-0002"
COOKIE = "session=cookie-secret-0003"


@pytest.mark.parametrize("other_host", ["127.0.0.1", "127.0.0.2"], ids=["other-port", "other-host"])
async def test_a_redirect_to_another_origin_carries_no_configured_header_or_key(
        other_host: str, harness: DaemonHarness, fault_server: StartServer) -> None:
    elsewhere = await fault_server(servers.answer(200), host=other_host)
    provider = await fault_server(servers.redirect_to(elsewhere.url))
    daemon = await harness.start({"alpha": Provider("vllm", provider.url, {
        "headers": {"X-Api-Key": HEADER_SECRET, "Cookie": COOKIE}})})
    await daemon.run_once()
    assert provider.requests and all(r.headers.get("x-api-key") == HEADER_SECRET for r in provider.requests)
    assert elsewhere.requests, "the redirect was not followed"
    for request in elsewhere.requests:
        assert "x-api-key" not in request.headers and "cookie" not in request.headers, request.headers
    assert state_of(daemon, "alpha").status is Status.UP


async def test_a_redirect_to_another_origin_carries_no_api_key(harness: DaemonHarness,
                                                               fault_server: StartServer) -> None:
    elsewhere = await fault_server(servers.answer(200), host="127.0.0.2")
    keyed = await fault_server(servers.redirect_to(elsewhere.url))
    text = yaml.safe_dump({"providers": {"beta": {"type": "vllm", "endpoint": keyed.url, "api_key": API_KEY,
                                                  "parameters": {"timeout": "1s", "max_retries": 0}}},
                           "storage": {"url": harness.db_url}, "api": {"listen": "127.0.0.1:0"}})
    other = Daemon(parse_config(text), install_signal_handlers=False)
    await other.start(serve_api=False)
    try:
        await other.run_once()
    finally:
        await other.stop()
    assert any(r.headers.get("authorization") == f"Bearer {API_KEY}" for r in keyed.requests)  # /v1/models
    arrived = elsewhere.requests
    assert arrived and all("authorization" not in r.headers for r in arrived), [r.headers for r in arrived]


# -- webhooks ----------------------------------------------------------------------------------------------------

HOOK_USER, HOOK_PASSWORD = "hookuser", "hook-pass-0004"
HOOK_PATH = "/services/T0AAA1111/B0BBB2222/tok3nXyZsecret"
HOOK_QUERY = "token=qu3ry-secret-0005&team=ops"


def hook_secrets() -> list[str]:
    basic = base64.b64encode(f"{HOOK_USER}:{HOOK_PASSWORD}".encode()).decode()
    return ["tok3nXyZsecret", "T0AAA1111", "B0BBB2222", "qu3ry-secret-0005", HOOK_PASSWORD, basic,
            basic.rstrip("=")]


def assert_no_hook_secret(text: str, where: str) -> None:
    for secret in hook_secrets():
        assert secret not in text, f"{where} holds {secret!r}: {text[:3000]}"


def alerting_config(db_url: str, hook_url: str, dead_endpoint: str) -> dict[str, Any]:
    return {
        "providers": {"alpha": {"type": "vllm", "endpoint": dead_endpoint,
                                "parameters": {"timeout": "500ms", "max_retries": 0, "probe_interval": "200ms"}}},
        "monitor": {"jitter": "0s"},
        "storage": {"url": db_url, "flush_interval": "50ms"},
        "api": {"listen": "127.0.0.1:0"},
        # the provider is dead from its first probe: only alert_never_up makes it page (and so reach the receiver)
        "alerts": {"failure_threshold": 1, "success_threshold": 1, "alert_never_up": True,
                   "webhooks": [{"name": "ops", "url": hook_url, "timeout": "2s"}]},
    }


@pytest.mark.parametrize("status", [404, 500])
async def test_an_echoing_receiver_puts_no_webhook_secret_in_stored_or_logged_errors(
        status: int, sqlite_url: str, fault_server: StartServer) -> None:
    receiver = await fault_server(servers.echo_request(status))
    dead = await fault_server(servers.accept_and_close())
    hook_url = f"http://{HOOK_USER}:{HOOK_PASSWORD}@127.0.0.1:{receiver.port}{HOOK_PATH}?{HOOK_QUERY}"
    doc = alerting_config(sqlite_url, hook_url, dead.url)
    with capture_logs() as logs:
        daemon = Daemon(parse_config(yaml.safe_dump(doc)), install_signal_handlers=False)
        await daemon.start()
        try:
            async with aiohttp.ClientSession() as http:
                api = f"http://127.0.0.1:{daemon.api_port}"

                async def errors_served() -> list[str]:
                    async with http.get(f"{api}/v1/alerts") as reply:
                        assert reply.status == 200
                        text = await reply.text()
                        assert_no_hook_secret(text, "GET /v1/alerts")
                        return [d["last_error"] for a in (await reply.json())["alerts"]
                                for d in a["deliveries"].values() if d["last_error"]]

                await eventually(errors_served, what="a delivery error stored")
                served = await errors_served()
        finally:
            await daemon.stop()
    assert receiver.requests, "nothing was delivered"
    echoed = receiver.requests[0]
    assert echoed.path == f"{HOOK_PATH}?{HOOK_QUERY}" and echoed.headers["authorization"].startswith("Basic ")
    assert any(f"HTTP {status}" in error for error in served), served
    assert_no_hook_secret(repr(logs), "the log")
    assert any(e["event"] in ("alert.delivery_failed", "alert.delivery_retry") for e in logs)


async def test_alert_test_shows_no_webhook_secret_from_an_echoing_receiver(tmp_path: Path,
                                                                           fault_server: StartServer) -> None:
    receiver = await fault_server(servers.echo_request(404))
    hook_url = f"http://{HOOK_USER}:{HOOK_PASSWORD}@127.0.0.1:{receiver.port}{HOOK_PATH}?{HOOK_QUERY}"
    doc = alerting_config(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}", hook_url, "http://127.0.0.1:1")
    path = tmp_path / "monitord.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, out, err = await monitord("alert", "test", "-c", str(path), "--timeout", "5")
    assert code == 1, (out, err)  # the receiver refused it: not delivered
    assert "HTTP 404" in out, out
    assert_no_hook_secret(out + err, "monitord alert test")
