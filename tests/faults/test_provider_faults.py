"""Provider-side faults against the real daemon: each is classified, recorded once per probe, and never stops it.

Every case runs the daemon in-process on a SQLite file with a faulty provider next to a healthy one, probes through
run_once and then through the scheduler, and checks the ProbeResult, the live state, the stored rows and what the
faulty server saw.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from monitord.model import ErrorClass, Status
from monitord.probe import IDENTIFY_AFTER
from monitord.providers.identity import AFTER_FAILURE_PATHS
from tests.faults import servers
from tests.faults.conftest import (
    PROBE_INTERVAL_S,
    PROBE_TIMEOUT_S,
    DaemonHarness,
    Provider,
    StartServer,
    peak_rss,
    state_of,
    wait_for_samples,
)
from tests.faults.servers import Behaviour, FaultServer
from tests.tools.ports import refused_port

TEN_MB = 10 << 20
MEMORY_BUDGET_BYTES = 20 << 20
LLAMACPP_LOADING = json.dumps({"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}})
RATE_LIMITED = json.dumps({"error": {"message": "Rate limit reached", "type": "rate_limit_error"}})
DNS_FAILURE = "http://monitord-fault.invalid:8000"  # RFC 6761: .invalid never resolves


@dataclass(frozen=True, slots=True)
class Fault:
    id: str
    behaviour: Callable[[], Behaviour] | None  # None: nothing listens (refused) or the name does not resolve
    status: Status
    error_class: ErrorClass
    says: str = ""  # part of the recorded message
    provider_type: str = "openai"  # generic: one GET /v1/models per probe
    endpoint: str | None = None  # only when there is no server
    connections_per_probe: int = 1  # what the server sees per probe (each answer closes its connection)


FAULTS = [
    Fault("refused", None, Status.DOWN, ErrorClass.REFUSED, "connection refused"),
    Fault("dns", None, Status.DOWN, ErrorClass.DNS, "did not resolve", endpoint=DNS_FAILURE),
    Fault("reset-mid-body", servers.reset_mid_body, Status.DOWN, ErrorClass.CONNECTION, "cut short"),
    Fault("hang-after-headers", servers.hang_after_headers, Status.DOWN, ErrorClass.TIMEOUT, "timed out"),
    # Slowloris, 20 bytes/s: each byte comes well inside any per-read timeout; only the probe deadline ends it.
    Fault("slowloris-body", lambda: servers.trickle(byte_interval_s=0.05), Status.DOWN, ErrorClass.TIMEOUT),
    Fault("slowloris-headers", lambda: servers.trickle(byte_interval_s=0.05, headers_too=True), Status.DOWN,
          ErrorClass.TIMEOUT),
    Fault("10MB-declared", lambda: servers.big_body(TEN_MB, declared=True), Status.DOWN, ErrorClass.TOO_LARGE,
          "exceeds the 1048576-byte cap"),
    Fault("10MB-chunked", lambda: servers.big_body(TEN_MB, declared=False), Status.DOWN, ErrorClass.TOO_LARGE,
          "exceeds the 1048576-byte cap"),
    # ~50 KB on the wire, an honest Content-Length: only a cap on the decompressed size catches it.
    Fault("gzip-bomb", lambda: servers.gzip_bomb(5 * TEN_MB), Status.DOWN, ErrorClass.TOO_LARGE, "exceeds"),
    Fault("invalid-json", lambda: servers.answer(200, b'{"object": "list", "data": [tru'), Status.DOWN,
          ErrorClass.BAD_PAYLOAD, "non-JSON body"),
    Fault("html-200", lambda: servers.answer(200, b"<!DOCTYPE html><html><body>It works!</body></html>",
                                             content_type="text/html"),
          Status.DOWN, ErrorClass.BAD_PAYLOAD, "HTML body"),
    Fault("wrong-json-shape", lambda: servers.answer(200, b'{"models": [{"name": "m1"}]}'), Status.DOWN,
          ErrorClass.BAD_PAYLOAD, "'data'"),
    Fault("redirect-loop", servers.redirect_loop, Status.DOWN, ErrorClass.REDIRECT, "redirects",
          connections_per_probe=5),  # probe.py follows at most max_redirects=5 hops: 5 requests
    Fault("401", lambda: servers.answer(401, b'{"error": "Unauthorized"}'), Status.DOWN, ErrorClass.AUTH,
          "HTTP 401 Unauthorized"),
    Fault("403", lambda: servers.answer(403, b""), Status.DOWN, ErrorClass.AUTH, "HTTP 403"),
    Fault("429-retry-after", lambda: servers.answer(429, RATE_LIMITED.encode(), headers=[("Retry-After", "30")]),
          Status.DOWN, ErrorClass.RATE_LIMITED, "HTTP 429 Rate limit reached"),
    Fault("503-loading-llamacpp", lambda: servers.answer(503, LLAMACPP_LOADING.encode()), Status.LOADING,
          ErrorClass.LOADING, "Loading model", provider_type="llamacpp"),  # loading: no identifying `/`
    # aiohttp resends an idempotent request once when the connection drops before an answer.
    Fault("accept-then-close", servers.accept_and_close, Status.DOWN, ErrorClass.CONNECTION,
          connections_per_probe=2),
    Fault("garbage-not-http", servers.garbage, Status.DOWN, ErrorClass.CONNECTION, "malformed HTTP response"),
    Fault("content-length-shorter-close",
          lambda: servers.content_length_lies(declared=10, body=servers.MODELS_BODY, then="close"),
          Status.DOWN, ErrorClass.CONNECTION, "malformed HTTP response"),
    Fault("content-length-shorter-keepalive",
          lambda: servers.content_length_lies(declared=10, body=servers.MODELS_BODY, then="keep"),
          Status.DOWN, ErrorClass.CONNECTION, "malformed HTTP response"),
    Fault("content-length-longer-close",
          lambda: servers.content_length_lies(declared=5000, body=servers.MODELS_BODY, then="close"),
          Status.DOWN, ErrorClass.CONNECTION, "cut short"),
    Fault("content-length-longer-hang",
          lambda: servers.content_length_lies(declared=5000, body=servers.MODELS_BODY, then="hang"),
          Status.DOWN, ErrorClass.TIMEOUT, "timed out"),
]


async def endpoint_for(fault: Fault, fault_server: StartServer) -> tuple[str, FaultServer | None]:
    if fault.behaviour is not None:
        server = await fault_server(fault.behaviour())
        return server.url, server
    return fault.endpoint or f"http://127.0.0.1:{refused_port()}", None


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.id)
async def test_fault_is_classified_recorded_and_survived(fault: Fault, harness: DaemonHarness,
                                                         fault_server: StartServer, provider_double: Any,
                                                         loop_errors: list[dict[str, Any]]) -> None:
    endpoint, server = await endpoint_for(fault, fault_server)
    good = await provider_double("vllm")
    daemon = await harness.start({"bad": Provider(fault.provider_type, endpoint), "good": Provider("vllm", good.url)},
                                 interval_s=PROBE_INTERVAL_S)

    results = {r.provider: r for r in await daemon.run_once()}
    bad = results["bad"]
    assert (bad.status, bad.error_class) == (fault.status, fault.error_class), bad.error
    assert bad.error and fault.says in bad.error and "\n" not in bad.error and len(bad.error) <= 300
    assert bad.total_ms < PROBE_TIMEOUT_S * 1000 + 250
    assert results["good"].status is Status.UP
    # run_once flushed: the newest stored row is this classification
    newest = (await daemon.store.history("bad", limit=1))[0]
    assert (newest.status, newest.error_class, newest.error) == (fault.status, fault.error_class, bad.error)

    # The scheduler goes on probing both providers at their interval.
    await wait_for_samples(daemon, {"bad": 3, "good": 3})
    assert daemon.healthy()
    await harness.stop(daemon)

    state = state_of(daemon, "bad")
    assert (state.status, state.last_error_class) == (fault.status, fault.error_class)
    assert state.failures_in_a_row == state.samples and state.samples_ok == 0
    good_state = state_of(daemon, "good")
    assert good_state.status is Status.UP and good_state.samples_ok == good_state.samples

    # No row lost or invented: one stored row per probe the daemon made, for both providers.
    assert daemon.store.dropped_total == 0
    rows = await harness.stored("bad")
    assert len(rows) == state.samples
    assert {(r.status, r.error_class) for r in rows} == {(fault.status, fault.error_class)}
    good_rows = await harness.stored("good")
    assert len(good_rows) == good_state.samples and {r.status for r in good_rows} == {Status.UP}
    if server is not None:
        # each probe reached the server; at most one more was in flight when stop cancelled it. After an answer
        # that may come from another server (IDENTIFY_AFTER), a probe also asks the few identifying routes once.
        per_probe = fault.connections_per_probe
        identifying = len(set(AFTER_FAILURE_PATHS) - {"/v1/models"}) if fault.error_class in IDENTIFY_AFTER else 0
        assert len(rows) * per_probe <= server.connections <= (len(rows) + 1) * (per_probe + identifying)
    assert not loop_errors


@pytest.mark.parametrize(
    "behaviour",
    [
        pytest.param(lambda: servers.big_body(TEN_MB, declared=True), id="10MB-declared"),
        pytest.param(lambda: servers.big_body(TEN_MB, declared=False), id="10MB-chunked"),
        pytest.param(lambda: servers.gzip_bomb(5 * TEN_MB), id="gzip-bomb-50MB"),
    ],
)
async def test_oversized_bodies_do_not_spike_memory(behaviour: Callable[[], Behaviour], harness: DaemonHarness,
                                                    fault_server: StartServer) -> None:
    server = await fault_server(behaviour())
    daemon = await harness.start({"big": Provider("openai", server.url)})
    await daemon.run_once()  # warm up: connection pool, SQL statements, the writer
    with peak_rss() as peak:
        for _ in range(3):
            (result,) = await daemon.run_once()
            assert result.error_class is ErrorClass.TOO_LARGE
    assert peak.delta_bytes < MEMORY_BUDGET_BYTES, (
        f"peak RSS grew {peak.delta_bytes / 2**20:.1f} MiB ({peak.method}) reading a too-large body")
    await harness.stop(daemon)
    assert len(await harness.stored("big")) == 4


@pytest.mark.parametrize(
    ("status", "body", "error_class"),
    [
        (401, b'{"error": "Unauthorized"}', ErrorClass.AUTH),
        (403, b"", ErrorClass.AUTH),
        (429, RATE_LIMITED.encode(), ErrorClass.RATE_LIMITED),
        (503, LLAMACPP_LOADING.encode(), ErrorClass.LOADING),
    ],
    ids=["401", "403", "429", "503-loading"],
)
async def test_answers_that_retrying_cannot_fix_are_asked_once(status: int, body: bytes, error_class: ErrorClass,
                                                               harness: DaemonHarness,
                                                               fault_server: StartServer) -> None:
    """With retries configured, a refusal (auth, rate limit with Retry-After, loading) is not hammered."""
    server = await fault_server(servers.answer(status, body, headers=[("Retry-After", "30")]))
    daemon = await harness.start({"p": Provider("openai", server.url, {"max_retries": 2, "retry_backoff": "10ms"})})
    for _ in range(2):
        (result,) = await daemon.run_once()
        assert result.error_class is error_class and result.attempts == 1
    await harness.stop(daemon)
    # one request of the probe's own per run (identifying routes asked after an AUTH/4xx answer aside)
    assert [path for path in server.paths() if path == "/v1/models"] == ["/v1/models", "/v1/models"]
    assert set(server.paths()) <= {"/v1/models", *AFTER_FAILURE_PATHS}
    assert len(await harness.stored("p")) == 2


async def test_a_lying_content_length_does_not_poison_the_next_probe(harness: DaemonHarness,
                                                                     fault_server: StartServer) -> None:
    """The bytes past a short Content-Length must not be read as the next probe's response on a reused
    keep-alive connection: once the server behaves, the provider is up again."""
    lies = servers.content_length_lies(declared=10, body=servers.MODELS_BODY, then="keep")
    honest = servers.answer(200)
    calls = {"n": 0}

    async def lie_once(ex: servers.Exchange) -> None:
        calls["n"] += 1
        await (lies if calls["n"] == 1 else honest)(ex)

    server = await fault_server(lie_once)
    daemon = await harness.start({"p": Provider("openai", server.url)})
    (first,) = await daemon.run_once()
    (second,) = await daemon.run_once()
    assert first.error_class is ErrorClass.CONNECTION
    assert (second.status, second.model_ids) == (Status.UP, ("m1",))
    await harness.stop(daemon)
    assert [r.status for r in await harness.stored("p")] == [Status.UP, Status.DOWN]  # newest first
