"""Webhook delivery against a real receiver on 127.0.0.1: headers, signature, and how each answer is classified."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest

from monitord.alerts.delivery import (
    USER_AGENT,
    Outcome,
    RetryPolicy,
    classify_status,
    deliver,
    parse_retry_after,
)
from monitord.alerts.formats import FORMATS, FormatOptions
from monitord.alerts.signing import sign, verify
from monitord.config import WebhookConfig
from monitord.model import AlertEvent, AlertProvider, AlertType, ErrorClass, Status
from tests.doubles.webhook_receiver import Reply, WebhookReceiver

SECRET = "whsec-test-0123456789"
TOKEN = "header-token-abcdef"
NOW = datetime(2025, 3, 1, 12, 0, 5, tzinfo=UTC)
EVENT = AlertEvent(
    id="0b7a3c36-5a0e-4c57-9d44-1f2e3d4c5b6a", type=AlertType.PROVIDER_DOWN, at=NOW,
    provider=AlertProvider("gpu-box", "vllm", "http://10.0.0.5:8000"), previous_status=Status.UP,
    status=Status.DOWN, since=NOW, failures_in_a_row=3, error_class=ErrorClass.REFUSED, error="connection refused",
)


def webhook(url: str, **fields: Any) -> WebhookConfig:
    """The config class the daemon hands to delivery, built the way the config loader builds it."""
    return WebhookConfig.model_validate({"name": "ops", "url": url, "timeout": 2.0, **fields})


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as started:
        yield started


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


async def test_delivers_a_signed_request_with_the_monitord_headers(receiver: WebhookReceiver,
                                                                   session: aiohttp.ClientSession) -> None:
    target = webhook(receiver.url, secret=SECRET, headers={"X-Token": TOKEN})
    result = await deliver(session, target, EVENT, now=NOW)
    assert result.outcome is Outcome.DELIVERED and result.http_status == 200 and result.error is None
    [got] = receiver.requests
    assert got.method == "POST" and got.path == "/hook"
    assert got.header("X-Monitord-Event") == "provider.down"
    assert got.header("X-Monitord-Delivery") == EVENT.id
    assert got.header("X-Monitord-Timestamp") == str(int(NOW.timestamp()))
    assert got.header("Content-Type") == "application/json"
    assert got.header("User-Agent") == USER_AGENT
    assert got.header("X-Token") == TOKEN
    assert got.body == FORMATS["json"](EVENT, FormatOptions()).body
    assert got.signature_valid(SECRET)
    assert not got.signature_valid("another-secret")
    assert verify(SECRET, got.header("X-Monitord-Timestamp") or "", got.body, got.header("X-Monitord-Signature") or "",
                  now_s=NOW.timestamp() + 10)


async def test_no_secret_means_no_signature_header(receiver: WebhookReceiver, session: aiohttp.ClientSession) -> None:
    assert (await deliver(session, webhook(receiver.url), EVENT, now=NOW)).outcome is Outcome.DELIVERED
    assert receiver.requests[0].header("X-Monitord-Signature") is None


async def test_configured_headers_cannot_replace_ours(receiver: WebhookReceiver,
                                                      session: aiohttp.ClientSession) -> None:
    target = webhook(receiver.url, secret=SECRET, headers={
        "X-Monitord-Event": "forged", "x-monitord-delivery": "forged", "Content-Type": "text/plain",
        "User-Agent": "custom-agent"})
    await deliver(session, target, EVENT, now=NOW)
    got = receiver.requests[0]
    assert got.header("X-Monitord-Event") == "provider.down"
    assert got.header("X-Monitord-Delivery") == EVENT.id
    assert got.header("Content-Type") == "application/json"
    assert got.header("User-Agent") == "custom-agent"  # allowed: some gateways route on it
    assert got.signature_valid(SECRET)


@pytest.mark.parametrize("fmt", ["json", "slack", "discord"])
async def test_each_format_goes_out_as_rendered(fmt: str, receiver: WebhookReceiver,
                                                session: aiohttp.ClientSession) -> None:
    receiver.answer(Reply(204, b""))  # Discord answers 204 No Content
    options = FormatOptions(source="lab")
    result = await deliver(session, webhook(receiver.url, format=fmt), EVENT, now=NOW, options=options)
    assert result.outcome is Outcome.DELIVERED and result.http_status == 204
    assert receiver.requests[0].body == FORMATS[fmt](EVENT, options).body


@pytest.mark.parametrize("status, outcome", [
    (200, Outcome.DELIVERED), (201, Outcome.DELIVERED), (202, Outcome.DELIVERED), (204, Outcome.DELIVERED),
    (500, Outcome.RETRY), (502, Outcome.RETRY), (503, Outcome.RETRY), (504, Outcome.RETRY),
    (408, Outcome.RETRY), (425, Outcome.RETRY), (429, Outcome.RETRY),
    (400, Outcome.FAILED), (401, Outcome.FAILED), (403, Outcome.FAILED), (404, Outcome.FAILED),
    (410, Outcome.FAILED), (413, Outcome.FAILED), (422, Outcome.FAILED),
    (301, Outcome.FAILED), (302, Outcome.FAILED), (307, Outcome.FAILED),
])
def test_classify_status(status: int, outcome: Outcome) -> None:
    assert classify_status(status) is outcome


async def test_server_error_is_retried_later(receiver: WebhookReceiver, session: aiohttp.ClientSession) -> None:
    receiver.fail(503, body=b"upstream busy")
    result = await deliver(session, webhook(receiver.url), EVENT, now=NOW)
    assert (result.outcome, result.http_status, result.error) == (Outcome.RETRY, 503, "HTTP 503: upstream busy")


async def test_bad_request_is_final(receiver: WebhookReceiver, session: aiohttp.ClientSession) -> None:
    receiver.reject(400, b"invalid_payload")
    result = await deliver(session, webhook(receiver.url, format="slack"), EVENT, now=NOW)
    assert (result.outcome, result.http_status, result.error) == (Outcome.FAILED, 400, "HTTP 400: invalid_payload")


@pytest.mark.parametrize("retry_after, expected_s", [("7", 7.0), ("0.25", 0.25), ("http-date", 120.0)])
async def test_rate_limit_reports_retry_after(retry_after: str, expected_s: float, receiver: WebhookReceiver,
                                              session: aiohttp.ClientSession) -> None:
    if retry_after == "http-date":
        retry_after = format_datetime(NOW + timedelta(seconds=120), usegmt=True)
    receiver.rate_limit(retry_after)
    result = await deliver(session, webhook(receiver.url), EVENT, now=NOW)
    assert result.outcome is Outcome.RETRY and result.http_status == 429
    assert result.retry_after_s == pytest.approx(expected_s)


async def test_redirect_is_not_followed(receiver: WebhookReceiver, session: aiohttp.ClientSession) -> None:
    receiver.plan(Reply(301, b"", {"Location": "http://127.0.0.1:1/elsewhere"}))
    result = await deliver(session, webhook(receiver.url), EVENT, now=NOW)
    assert result.outcome is Outcome.FAILED and result.http_status == 301
    assert "redirects are not followed" in (result.error or "")
    assert len(receiver.requests) == 1


async def test_slow_receiver_times_out_and_is_retried(receiver: WebhookReceiver,
                                                      session: aiohttp.ClientSession) -> None:
    receiver.slow(5.0)
    started = time.monotonic()
    result = await deliver(session, webhook(receiver.url, timeout=0.2), EVENT, now=NOW)
    assert time.monotonic() - started < 2.0
    assert (result.outcome, result.http_status, result.error) == (Outcome.RETRY, None, "timed out after 0.2s")


async def test_refused_connection_is_retried(receiver: WebhookReceiver, session: aiohttp.ClientSession) -> None:
    await receiver.down()
    result = await deliver(session, webhook(receiver.url), EVENT, now=NOW)
    assert result.outcome is Outcome.RETRY and result.http_status is None
    assert result.error == "cannot connect: connection refused"


async def test_receiver_back_on_the_same_port_gets_the_same_delivery_id(receiver: WebhookReceiver,
                                                                        session: aiohttp.ClientSession) -> None:
    target = webhook(receiver.url, secret=SECRET)
    receiver.fail(500, times=3)
    outcomes = [(await deliver(session, target, EVENT, now=NOW)).outcome for _ in range(4)]
    assert outcomes == [Outcome.RETRY] * 3 + [Outcome.DELIVERED]
    assert {r.header("X-Monitord-Delivery") for r in receiver.requests} == {EVENT.id}
    assert [r.reply_status for r in receiver.requests] == [500, 500, 500, 200]
    assert len(receiver.delivered()) == 1 and receiver.delivered()[0].signature_valid(SECRET)


async def test_errors_never_echo_the_url_secret_or_header_values(receiver: WebhookReceiver,
                                                                 session: aiohttp.ClientSession) -> None:
    target = webhook(receiver.url, secret=SECRET, headers={"Authorization": f"Bearer {TOKEN}"})
    receiver.reject(400, f"bad request to {receiver.url} with {TOKEN} signed by {SECRET}".encode())
    result = await deliver(session, target, EVENT, now=NOW)
    assert result.outcome is Outcome.FAILED
    error = result.error or ""
    assert SECRET not in error and TOKEN not in error and receiver.url not in error
    assert error == "HTTP 400: bad request to *** with *** signed by ***"


async def test_invalid_url_and_unknown_format_fail_without_raising(session: aiohttp.ClientSession) -> None:
    bad_url = WebhookConfig.model_construct(name="x", url="http://[::1:80/hook", format="json", secret=None,
                                            headers={}, timeout_s=1.0)
    assert (await deliver(session, bad_url, EVENT, now=NOW)).outcome is Outcome.FAILED
    unknown = WebhookConfig.model_construct(name="x", url="http://127.0.0.1:9/", format="teams", secret=None,
                                            headers={}, timeout_s=1.0)
    result = await deliver(session, unknown, EVENT, now=NOW)
    assert (result.outcome, result.error) == (Outcome.FAILED, "unknown format 'teams'")


# -- pure parts: backoff, Retry-After, signatures ------------------------------------------------------------


@pytest.mark.parametrize("attempts, rand, retry_after_s, delay_s", [
    (1, 0.0, None, 0.5), (1, 1.0, None, 1.0),
    (2, 0.0, None, 1.0), (2, 1.0, None, 2.0),
    (5, 0.5, None, 12.0),  # ceiling 16: 8 + 0.5 * 8
    (20, 1.0, None, 300.0), (20, 0.0, None, 150.0),  # capped at max_delay_s, jitter keeps half
    (1000, 1.0, None, 300.0),  # no overflow
    (3, 0.9, 7.0, 7.0),  # the receiver's Retry-After wins
    (3, 0.9, 0.0, 0.0),
    (3, 0.9, 99999.0, 3600.0),  # but not beyond max_retry_after_s
])
def test_retry_delay(attempts: int, rand: float, retry_after_s: float | None, delay_s: float) -> None:
    assert RetryPolicy().delay_s(attempts, retry_after_s, rand=lambda: rand) == pytest.approx(delay_s)


@pytest.mark.parametrize("value, seconds", [
    (None, None), ("", None), ("  ", None), ("soon", None), ("nan", None), ("inf", None),
    ("3", 3.0), (" 2.5 ", 2.5), ("-4", 0.0),
    ("Sat, 01 Mar 2025 12:01:05 GMT", 60.0),
    ("Sat, 01 Mar 2025 11:00:00 GMT", 0.0),  # in the past: retry now
])
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == (pytest.approx(seconds) if seconds is not None else None)


@pytest.mark.parametrize("secret, timestamp, body, now_s, valid", [
    (SECRET, "1740830405", b'{"a":1}', None, True),
    (SECRET, "1740830405", b'{"a":1} ', None, False),  # body changed
    ("other", "1740830405", b'{"a":1}', None, False),  # wrong secret
    (SECRET, "1740830405", b'{"a":1}', 1740830405 + 299, True),
    (SECRET, "1740830405", b'{"a":1}', 1740830405 + 301, False),  # replayed too late
    (SECRET, "not-a-time", b'{"a":1}', 1740830405, False),
])
def test_signature_verification(secret: str, timestamp: str, body: bytes, now_s: float | None, valid: bool) -> None:
    signature = sign(SECRET, "1740830405" if timestamp == "not-a-time" else timestamp, b'{"a":1}')
    assert verify(secret, timestamp, body, signature, now_s=now_s) is valid


def test_signature_is_hex_hmac_sha256_of_timestamp_dot_body() -> None:
    # Independent computation, as a receiver in another language would do it.
    import hashlib
    import hmac

    expected = hmac.new(b"k", b"1700000000." + b"{}", hashlib.sha256).hexdigest()
    assert sign("k", "1700000000", b"{}") == f"sha256={expected}"
