"""Every way a request can fail ends in the one error shape, checked by the one helper (assert_error)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer

from monitord.api import make_app
from monitord.api.openapi import ERROR_CODES
from monitord.model import ProviderSpec
from monitord.store import Store
from tests.plugins.api import TOKEN, ApiFactory, World, assert_error

CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    # method, path, request options, status, code
    ("GET", "/nope", {}, 404, "not_found"),
    ("GET", "/v1/providers/", {}, 404, "not_found"),
    ("GET", "/v1/providers/omega", {}, 404, "provider_not_found"),
    ("GET", "/v1/providers/omega/history", {}, 404, "provider_not_found"),
    ("GET", "/v1/events?provider=omega", {}, 404, "provider_not_found"),
    ("POST", "/v1/ranking", {}, 405, "method_not_allowed"),
    ("DELETE", "/v1/providers/alpha", {}, 405, "method_not_allowed"),
    ("GET", "/v1/select", {}, 405, "method_not_allowed"),
    ("PUT", "/healthz", {}, 405, "method_not_allowed"),
    ("GET", "/v1/providers?x=1", {}, 400, "invalid_parameter"),
    ("GET", "/v1/models?x=1", {}, 400, "invalid_parameter"),
    ("GET", "/v1/ranking?cap=vision", {}, 400, "invalid_parameter"),
    ("GET", "/v1/ranking?task_type=nope", {}, 400, "invalid_criteria"),
    ("GET", "/v1/providers/alpha/history?since=soon", {}, 400, "invalid_parameter"),
    ("POST", "/v1/select", {"data": b"{"}, 400, "invalid_json"),
    ("POST", "/v1/select", {"data": b"null"}, 400, "invalid_json"),
    ("POST", "/v1/select", {"json": {"quality_preference": "cheap"}}, 400, "invalid_criteria"),
    ("POST", "/v1/select", {"data": b" " * (64 * 1024 + 1)}, 413, "body_too_large"),
    ("POST", "/v1/select", {"json": {"task_type": "rerank"}}, 503, "no_provider"),
    ("POST", "/v1/report", {"json": {"provider": "alpha", "outcome": "fine"}}, 400, "invalid_report"),
    ("POST", "/v1/report", {"json": {"provider": "omega", "outcome": "ok"}}, 404, "provider_not_found"),
    # the api_factory world has no alerts backend; tests/test_api_alerts.py covers the wired daemon
    ("GET", "/v1/alerts", {}, 503, "alerts_unavailable"),
    ("POST", "/v1/silences", {"json": {"provider": "x"}}, 503, "alerts_unavailable"),
]


@pytest.mark.parametrize(("method", "path", "options", "status", "code"), CASES,
                         ids=[f"{c[0]} {c[1][:40]} {c[4]}" for c in CASES])
async def test_error_shape(api_factory: ApiFactory, method: str, path: str, options: dict[str, Any], status: int,
                           code: str) -> None:
    client, _ = await api_factory()
    resp = await client.request(method, path, **options)
    await assert_error(resp, status, code)
    if status == 405:
        assert resp.headers["Allow"]


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/ranking"), ("GET", "/nope"), ("POST", "/v1/select"),
                                              ("DELETE", "/v1/ranking")])
async def test_auth_comes_first_and_in_the_same_shape(api_factory: ApiFactory, method: str, path: str) -> None:
    client, _ = await api_factory(token=TOKEN)
    await assert_error(await client.request(method, path), 401, "unauthorized")


async def test_not_ready_has_the_shape(api_factory: ApiFactory) -> None:
    client, _ = await api_factory(ready=False)
    error = await assert_error(await client.get("/readyz"), 503, "not_ready")
    assert error["details"] == {"checks": {"first_round": False, "store": True, "probes_fresh": True}}


class BrokenSpecs(Mapping[str, ProviderSpec]):
    """Configuration that fails when read: stands in for a bug below the views."""

    def __getitem__(self, key: str) -> ProviderSpec:
        raise RuntimeError("boom")

    def __iter__(self) -> Any:
        raise RuntimeError("boom")

    def __len__(self) -> int:
        raise RuntimeError("boom")


async def test_a_bug_is_a_500_in_the_shape_and_logged(sqlite_store: Store) -> None:
    world = World(store=sqlite_store)
    broken = BrokenSpecs()
    world.ctx.specs = lambda: broken
    world.ctx.ranking.specs = world.ctx.specs
    async with TestClient(TestServer(make_app(world.ctx))) as client:
        with structlog.testing.capture_logs() as logs:
            error = await assert_error(await client.get("/v1/providers/alpha"), 500, "internal_error")
    assert "boom" not in error["message"]  # internals stay in the log
    assert [entry["event"] for entry in logs] == ["api.unhandled_error"]
    assert logs[0]["path"] == "/v1/providers/alpha"


def test_every_code_raised_is_documented() -> None:
    """The codes the tests see are the ones the OpenAPI document lists, and the other way round."""
    seen = {case[4] for case in CASES} | {"unauthorized", "not_ready", "internal_error", "store_unavailable",
                                          "shutting_down", "too_many_subscribers", "bad_request",
                                          # raised against the real daemon in tests/test_api_alerts.py
                                          "invalid_silence", "silence_not_found", "silence_in_config",
                                          # tests/faults/test_limit_faults.py (a thousand silences, then one more)
                                          "too_many_silences",
                                          # tests/test_report.py
                                          "invalid_report"}
    assert seen == set(ERROR_CODES)
