"""TLS and IPv6 end to end: the daemon probes a vLLM double over HTTPS with a certificate made in the test, and
over [::1]; verification options (default, insecure/verify_tls, ca_file) decide between up and down/tls."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from monitord.model import ErrorClass, Status
from tests.doubles.base import DoubleControl
from tests.doubles.openai import vllm_app
from tests.faults.conftest import DaemonHarness, Provider, state_of

VLLM_MODEL = "meta-llama/Llama-3.1-8B-Instruct"  # what the vLLM double's fixture lists


def has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass
class Pki:
    """A CA the tests trust (written to `ca_file`), another one nobody configured, and a server context maker."""

    tmp_path: Path
    ca: trustme.CA = field(default_factory=trustme.CA)

    def __post_init__(self) -> None:
        self.ca_file = self.tmp_path / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.other_ca_file = self.tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(self.other_ca_file))

    def server_context(self, *names: str, expired: bool = False) -> ssl.SSLContext:
        dates: dict[str, Any] = {}
        if expired:
            now = datetime.now(UTC)
            dates = {"not_before": now - timedelta(days=30), "not_after": now - timedelta(days=1)}
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*names, **dates).configure_cert(context)
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


ServeVllm = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve_vllm() -> AsyncIterator[ServeVllm]:
    """Factory: `await serve_vllm(host="127.0.0.1", ssl_context=None)` runs the vLLM double; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None) -> str:
        runner = web.AppRunner(vllm_app(DoubleControl()), shutdown_timeout=0.1, access_log=None,
                               handle_signals=False)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, host, 0, ssl_context=ssl_context).start()
        port = runner.addresses[0][1]
        return f"{'https' if ssl_context else 'http'}://{url_host(host)}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@dataclass(frozen=True, slots=True)
class TlsCase:
    id: str
    server: str  # "good": a certificate for 127.0.0.1 from `pki.ca`; "wrong-name", "expired", "plain-http"
    parameters: dict[str, Any]  # "CA" and "OTHER_CA" stand for the PEM files of Pki
    status: Status
    error_class: ErrorClass | None = None
    says: str = ""


TLS_CASES = [
    TlsCase("default-rejects-self-signed", "good", {}, Status.DOWN, ErrorClass.TLS, "certificate verify failed"),
    TlsCase("insecure-true", "good", {"insecure": True}, Status.UP),
    TlsCase("verify_tls-false", "good", {"verify_tls": False}, Status.UP),
    TlsCase("ca_file", "good", {"ca_file": "CA"}, Status.UP),
    TlsCase("ca_file-of-another-ca", "good", {"ca_file": "OTHER_CA"}, Status.DOWN, ErrorClass.TLS,
            "certificate verify failed"),
    # the CA is trusted, but the certificate names another host: hostname checking stays on with ca_file
    TlsCase("wrong-host-name", "wrong-name", {"ca_file": "CA"}, Status.DOWN, ErrorClass.TLS, "mismatch"),
    TlsCase("expired", "expired", {"ca_file": "CA"}, Status.DOWN, ErrorClass.TLS, "expired"),
    TlsCase("expired-but-insecure", "expired", {"insecure": True}, Status.UP),
    # https:// in the config, plain HTTP on the port
    TlsCase("https-to-plain-http", "plain-http", {}, Status.DOWN, ErrorClass.TLS, "wrong version number"),
]


async def https_endpoint(case: TlsCase, pki: Pki, serve_vllm: ServeVllm) -> str:
    if case.server == "plain-http":
        return (await serve_vllm()).replace("http://", "https://")
    names = {"good": ("127.0.0.1", "localhost"), "wrong-name": ("monitord.example",), "expired": ("127.0.0.1",)}
    return await serve_vllm(ssl_context=pki.server_context(*names[case.server], expired=case.server == "expired"))


@pytest.mark.parametrize("case", TLS_CASES, ids=lambda c: c.id)
async def test_tls_verification_end_to_end(case: TlsCase, pki: Pki, serve_vllm: ServeVllm,
                                           harness: DaemonHarness) -> None:
    endpoint = await https_endpoint(case, pki, serve_vllm)
    files = {"CA": str(pki.ca_file), "OTHER_CA": str(pki.other_ca_file)}
    parameters = {k: files.get(v, v) if isinstance(v, str) else v for k, v in case.parameters.items()}
    daemon = await harness.start({"tls": Provider("vllm", endpoint, parameters)})
    assert daemon.specs["tls"].base_url.startswith("https://")

    results = [(await daemon.run_once())[0] for _ in range(2)]  # the second one may reuse the connection
    for result in results:
        assert (result.status, result.error_class) == (case.status, case.error_class), result.error
        if case.status is Status.UP:
            assert result.model_ids == (VLLM_MODEL,)
        else:
            assert case.says in (result.error or "") and "\n" not in (result.error or "")
            assert result.calls[0].status is None  # no HTTP exchange happened
    assert state_of(daemon, "tls").status is case.status
    await harness.stop(daemon)
    rows = await harness.stored("tls")
    assert [(r.status, r.error_class) for r in rows] == [(case.status, case.error_class)] * 2


@needs_ipv6
async def test_ipv6_endpoint_is_up(serve_vllm: ServeVllm, harness: DaemonHarness) -> None:
    endpoint = await serve_vllm(host="::1")
    assert endpoint.startswith("http://[::1]:")
    daemon = await harness.start({"v6": Provider("vllm", endpoint), "v6-with-v1": Provider("vllm", endpoint + "/v1")})
    results = {r.provider: r for r in await daemon.run_once()}
    for name in ("v6", "v6-with-v1"):
        assert (results[name].status, results[name].model_ids) == (Status.UP, (VLLM_MODEL,)), results[name].error
        assert state_of(daemon, name).status is Status.UP
    await harness.stop(daemon)
    assert [r.status for r in await harness.stored("v6")] == [Status.UP]


@needs_ipv6
async def test_ipv6_refused_is_classified(harness: DaemonHarness) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.bind(("::1", 0))
        port = sock.getsockname()[1]
    daemon = await harness.start({"v6": Provider("vllm", f"http://[::1]:{port}")})
    (result,) = await daemon.run_once()
    assert (result.status, result.error_class) == (Status.DOWN, ErrorClass.REFUSED), result.error
    assert "::1" in (result.error or "")
    await harness.stop(daemon)
    assert len(await harness.stored("v6")) == 1


@needs_ipv6
async def test_https_over_ipv6_with_ca_file(pki: Pki, serve_vllm: ServeVllm, harness: DaemonHarness) -> None:
    """The certificate is checked against the IPv6 literal (an IP SAN), not a host name."""
    endpoint = await serve_vllm(host="::1", ssl_context=pki.server_context("::1"))
    daemon = await harness.start({"v6tls": Provider("vllm", endpoint, {"ca_file": str(pki.ca_file)}),
                                  "v6tls-default": Provider("vllm", endpoint)})
    results = {r.provider: r for r in await daemon.run_once()}
    assert results["v6tls"].status is Status.UP, results["v6tls"].error
    assert results["v6tls-default"].error_class is ErrorClass.TLS
    await harness.stop(daemon)


async def test_ca_file_probes_reuse_their_tls_connection(pki: Pki, serve_vllm: ServeVllm,
                                                         harness: DaemonHarness) -> None:
    endpoint = await serve_vllm(ssl_context=pki.server_context("127.0.0.1"))
    daemon = await harness.start({"ca": Provider("vllm", endpoint, {"ca_file": str(pki.ca_file)}),
                                  "insecure": Provider("vllm", endpoint, {"insecure": True})})
    await daemon.run_once()
    again = {r.provider: r for r in await daemon.run_once()}
    await harness.stop(daemon)
    assert again["insecure"].connect_ms is None  # reused: no new connection was made
    assert again["ca"].connect_ms is None


async def test_unreadable_ca_file_is_a_tls_failure_not_a_crash(tmp_path: Path, serve_vllm: ServeVllm,
                                                             harness: DaemonHarness, pki: Pki) -> None:
    endpoint = await serve_vllm(ssl_context=pki.server_context("127.0.0.1"))
    daemon = await harness.start({"ca": Provider("vllm", endpoint, {"ca_file": str(tmp_path / "missing.pem")})})
    result = (await daemon.run_once())[0]
    await harness.stop(daemon)
    assert (result.status, result.error_class) == (Status.DOWN, ErrorClass.TLS)
    assert "missing.pem" in (result.error or "")
