"""The one code path that sends alerts: a signed POST whose answer is sorted into delivered, retry later or failed.

Formats build the body (pure); this module owns HTTP, headers, signing, timeouts and the retry schedule. Nothing
here logs or returns a webhook URL (Slack and Discord put their token in it), a header value or the secret.
"""

from __future__ import annotations

import base64
import enum
import html
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol
from urllib.parse import quote, unquote, unquote_plus, urlsplit

import aiohttp
from multidict import CIMultiDict

from monitord import __version__
from monitord.alerts.formats import FORMATS, GROUP_FORMATS, FormatOptions, Rendered, group_id
from monitord.alerts.signing import sign
from monitord.model import AlertEvent, Secret

EVENT_HEADER = "X-Monitord-Event"
DELIVERY_HEADER = "X-Monitord-Delivery"
TIMESTAMP_HEADER = "X-Monitord-Timestamp"
SIGNATURE_HEADER = "X-Monitord-Signature"
USER_AGENT = f"monitord/{__version__}"
BATCH_EVENT = "batch"  # X-Monitord-Event of a message that carries several events
# Configured headers may not replace these: receivers rely on them.
_OWN_HEADERS = frozenset(h.lower() for h in (EVENT_HEADER, DELIVERY_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER,
                                             "Content-Type", "Content-Length", "Host"))
_ERROR_BODY_BYTES = 512  # enough of an error answer to say why (Slack "invalid_payload", Discord's JSON error)
_ERROR_TEXT_MAX = 200
_MASKED_WORD_MIN = 6
_MASKED_PART_MIN = 4  # path segments and query pieces this long are masked wherever they appear
# Transient by nature though 4xx: the server timed out reading us, or asks us to slow down.
_RETRYABLE_4XX = frozenset({408, 425, 429})


class WebhookTarget(Protocol):
    """What delivery needs of a configured webhook; config.WebhookConfig has exactly these attributes."""

    @property
    def name(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def secret(self) -> Secret | None: ...
    @property
    def headers(self) -> Mapping[str, Secret]: ...
    @property
    def timeout_s(self) -> float: ...


class Outcome(enum.StrEnum):
    DELIVERED = "delivered"  # 2xx: the event leaves the outbox for this webhook
    RETRY = "retry"  # timeout, connection error, 5xx, 408/425/429: try again later
    FAILED = "failed"  # any other answer: retrying cannot help


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """How one attempt went. `error` is short and safe to store and show (no URL, header value or secret)."""

    outcome: Outcome
    http_status: int | None = None
    error: str | None = None
    retry_after_s: float | None = None  # what the receiver asked for (Retry-After), when it did
    elapsed_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits between half and all of min(max, base * 2^(n-1))."""

    base_delay_s: float = 1.0
    max_delay_s: float = 300.0
    max_retry_after_s: float = 3600.0  # a receiver asking for longer is waited on this long, then retried
    give_up_after_s: float = 86400.0  # retrying stops this long after the event; the delivery is then failed

    def delay_s(self, attempts: int, retry_after_s: float | None = None,
                rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after `attempts` failed attempts (>= 1). A Retry-After the receiver sent wins."""
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.max_retry_after_s)
        ceiling_s = min(self.max_delay_s, self.base_delay_s * 2.0 ** min(max(attempts, 1) - 1, 32))
        return ceiling_s / 2 + rand() * ceiling_s / 2


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds from `now`: delta-seconds (Discord sends fractions) or an HTTP date."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN, inf
        return None
    return max(seconds, 0.0)


def classify_status(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status >= 500 or status in _RETRYABLE_4XX:
        return Outcome.RETRY
    return Outcome.FAILED  # other 4xx, and 1xx/3xx: redirects are not followed with a signed body


def request_headers(target: WebhookTarget, event_type: str, delivery_id: str, rendered: Rendered,
                    timestamp_s: int) -> CIMultiDict[str]:
    """Configured headers, then ours (which win): event, delivery id, timestamp, signature when a secret is set."""
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in target.headers.items():
        if name.lower() not in _OWN_HEADERS:
            headers[name] = value.reveal()
    headers.setdefault("User-Agent", USER_AGENT)
    timestamp = str(timestamp_s)
    headers["Content-Type"] = rendered.content_type
    headers[EVENT_HEADER] = event_type
    headers[DELIVERY_HEADER] = delivery_id
    headers[TIMESTAMP_HEADER] = timestamp
    if target.secret:
        headers[SIGNATURE_HEADER] = sign(target.secret.reveal(), timestamp, rendered.body)
    return headers


async def deliver(session: aiohttp.ClientSession, target: WebhookTarget, event: AlertEvent, *, now: datetime,
                  options: FormatOptions | None = None) -> DeliveryResult:
    """Render `event` in the target's format and POST it once. Never raises for anything the network does.

    `now` stamps X-Monitord-Timestamp and reads an HTTP-date Retry-After. The session is the daemon's shared one.
    """
    render = FORMATS.get(target.format)
    if render is None:
        return DeliveryResult(Outcome.FAILED, error=f"unknown format {target.format!r}")
    rendered = render(event, options or FormatOptions())
    return await _post(session, target, rendered, event.type.value, event.id, now)


async def deliver_group(session: aiohttp.ClientSession, target: WebhookTarget, events: Sequence[AlertEvent], *,
                        now: datetime, options: FormatOptions | None = None) -> DeliveryResult:
    """Several events in one message (a chat summary, or a json `batch`); one event is sent as by deliver().

    X-Monitord-Delivery is the group's id (the same events give the same id on a retry); X-Monitord-Event is
    `batch`.
    """
    if len(events) == 1:
        return await deliver(session, target, events[0], now=now, options=options)
    render = GROUP_FORMATS.get(target.format)
    if render is None:
        return DeliveryResult(Outcome.FAILED, error=f"unknown format {target.format!r}")
    rendered = render(events, options or FormatOptions())
    return await _post(session, target, rendered, BATCH_EVENT, group_id(events), now)


async def _post(session: aiohttp.ClientSession, target: WebhookTarget, rendered: Rendered, event_type: str,
                delivery_id: str, now: datetime) -> DeliveryResult:
    headers = request_headers(target, event_type, delivery_id, rendered, int(now.timestamp()))
    started = time.perf_counter()
    try:
        async with session.post(target.url, data=rendered.body, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=target.timeout_s)) as response:
            status = response.status
            retry_after_s = parse_retry_after(response.headers.get("Retry-After"), now)
            snippet = b"" if 200 <= status < 300 else await response.content.read(_ERROR_BODY_BYTES)
    except (TimeoutError, aiohttp.ServerTimeoutError):
        return _failure(Outcome.RETRY, f"timed out after {target.timeout_s:g}s", started)
    except aiohttp.InvalidURL:
        return _failure(Outcome.FAILED, "invalid URL", started)
    except (aiohttp.ClientSSLError, aiohttp.ClientConnectorCertificateError):
        return _failure(Outcome.RETRY, "TLS handshake or certificate failed", started)
    except aiohttp.ClientConnectorDNSError:
        return _failure(Outcome.RETRY, "cannot connect: host name did not resolve", started)
    except aiohttp.ClientConnectorError as exc:
        # strerror of the errno, not str(exc): the exception text names the host and port
        reason = os.strerror(exc.errno) if exc.errno else type(exc.os_error).__name__
        return _failure(Outcome.RETRY, f"cannot connect: {reason.lower()}", started)
    except (aiohttp.ClientError, OSError) as exc:  # reset, disconnected, malformed answer
        return _failure(Outcome.RETRY, f"connection error: {type(exc).__name__}", started)
    except Exception as exc:  # the request could not even be built (e.g. aiohttp refusing URL credentials
        # together with an Authorization header): retrying the same request cannot help. Never the message: it
        # may quote the URL.
        return _failure(Outcome.FAILED, f"request refused by the HTTP client: {type(exc).__name__}", started)
    elapsed_ms = (time.perf_counter() - started) * 1000
    outcome = classify_status(status)
    if outcome is Outcome.DELIVERED:
        return DeliveryResult(outcome, http_status=status, elapsed_ms=elapsed_ms)
    error = f"HTTP {status}"
    detail = _answer_text(snippet, target)
    if detail:
        error += f": {detail}"
    if 300 <= status < 400:
        error += " (redirects are not followed: configure the final URL)"
    return DeliveryResult(outcome, http_status=status, error=error, retry_after_s=retry_after_s,
                          elapsed_ms=elapsed_ms)


def _failure(outcome: Outcome, error: str, started: float) -> DeliveryResult:
    return DeliveryResult(outcome, error=error, elapsed_ms=(time.perf_counter() - started) * 1000)


def _answer_text(raw: bytes, target: WebhookTarget) -> str:
    """The start of an error answer on one line, with anything of ours it might echo masked."""
    return sanitize_error(raw.decode("utf-8", "replace"), target)


def sanitize_error(text: str, target: WebhookTarget) -> str:
    """Error text safe to store, log and serve: one short line without the webhook URL's path, query or
    credentials, its header values or its secret, in any form a receiver might echo them (percent-encoded or
    decoded, HTML- or JSON-escaped, Basic credentials in base64). The one sanitizer for `last_error`."""
    text = " ".join(text.split())
    hidden = [*_url_secrets(target.url), *(value.reveal() for value in target.headers.values())]
    if target.secret:
        hidden.append(target.secret.reveal())
    # `Bearer <token>` may come back as the bare token: mask every long word of a hidden value too.
    hidden += [word for value in hidden for word in value.split() if len(word) >= _MASKED_WORD_MIN]
    forms = {form for value in hidden for form in _echoed_forms(value)}
    for form in sorted(forms, key=len, reverse=True):
        if form:
            text = text.replace(form, "***")
    return text if len(text) <= _ERROR_TEXT_MAX else text[: _ERROR_TEXT_MAX - 1] + "…"


def _url_secrets(url: str) -> list[str]:
    """The parts of a webhook URL that may be its credential (Slack and Discord put the token in the path)."""
    parts = urlsplit(url)
    secrets = [url, parts.path, parts.query, parts.fragment, f"{parts.path}?{parts.query}"]
    secrets += [segment for segment in parts.path.split("/") if len(segment) >= _MASKED_PART_MIN]
    for pair in parts.query.split("&"):
        secrets += [piece for piece in pair.split("=") if len(piece) >= _MASKED_PART_MIN]
    if parts.username is not None or parts.password is not None:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        secrets += [userinfo, user, password, basic, basic.rstrip("=")]
    return [secret for secret in secrets if secret and secret != "/"]


def _echoed_forms(value: str) -> set[str]:
    """`value` as a receiver may send it back: as sent, percent-decoded or encoded, HTML- or JSON-escaped."""
    forms = {value, unquote(value), unquote_plus(value), quote(value, safe="/"), quote(value, safe="")}
    forms |= {html.escape(form) for form in list(forms)} | {form.replace("/", "\\/") for form in list(forms)}
    return forms

