"""Hostile text against the real daemon and the real `monitord` command: model ids and error text that look like
Rich markup or terminal escapes, endpoint passwords that hold `@` and `:`, and a lower-case bearer scheme.

Issue 14, items 10 (one redaction, hostile userinfo), 12 (server data is plain text) and 16 (scheme case).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from structlog.testing import capture_logs

from monitord.config import parse_config
from monitord.daemon import Daemon
from monitord.text import redact_url, safe_text
from tests.plugins.api import assert_error
from tests.test_cli import monitord
from tests.test_outage import eventually

# Model ids a server may list: markup that crashed the tables, markup that rendered, a hyperlink (OSC 8), colours.
HOSTILE_IDS = ("[/]", "[bold red]x[/bold red]", "\x1b]8;;http://evil.example/\x07click\x1b]8;;\x07",
               "\x1b[31mred\x1b[0m", "rtl\u202eexe.txt")
MISSING_ID = "[/]gone\x1b[2J"  # configured, not served: it comes back inside the error text
TOKEN = "s3cr3t-api-token"
PASSWORD = "p@ss:w@rd"  # hostile userinfo: `@` and `:` inside the password
PASSWORD_PARTS = ("p@ss", "w@rd", "ss:w")


def config_doc(endpoints: dict[str, str], *, listen: str = "127.0.0.1:0", **provider_extra: Any) -> dict[str, Any]:
    return {
        "providers": {name: {"type": "vllm", "endpoint": url, **provider_extra.get(name, {}),
                             "parameters": {"timeout": "1s", "max_retries": 0, "probe_interval": "200ms"}}
                      for name, url in endpoints.items()},
        "monitor": {"jitter": "0s"},
        "storage": {"url": "sqlite+aiosqlite:///:memory:", "flush_interval": "50ms"},
        "api": {"listen": listen, "token": TOKEN},
        "alerts": {"failure_threshold": 1, "success_threshold": 1},
    }


@contextlib.asynccontextmanager
async def serving(doc: dict[str, Any], db_url: str) -> AsyncIterator[Daemon]:
    doc = {**doc, "storage": {**doc["storage"], "url": db_url}}
    daemon = Daemon(parse_config(yaml.safe_dump(doc)), install_signal_handlers=False)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


def assert_plain(output: str) -> None:
    """No raw escape reached the terminal and every hostile id is shown as its escaped text."""
    assert "\x1b" not in output and "\x07" not in output and "\u202e" not in output, repr(output)
    assert "Traceback" not in output, output


async def test_check_prints_hostile_model_ids_and_errors_as_plain_text(tmp_path: Path, provider_double: Any) -> None:
    double = await provider_double("vllm", models=HOSTILE_IDS)
    doc = config_doc({"alpha": double.url, "beta": double.url}, beta={"models": [MISSING_ID]})
    doc["storage"]["url"] = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    path = tmp_path / "monitord.yaml"
    path.write_text(yaml.safe_dump(doc))

    code, out, err = await monitord("check", "-c", str(path), "--provider", "alpha")
    assert code == 0, (out, err)  # the table printed, alpha is up
    assert_plain(out + err)
    assert "[/]" in out and "[bold red]x[/bold red]" in out and "\\x1b]8;;http://evil.example/\\x07" in out

    code, out, err = await monitord("check", "-c", str(path))
    assert code == 1, (out, err)  # beta is degraded: a configured model is missing; no crash
    assert_plain(out + err)
    assert "model_missing" in out and safe_text(MISSING_ID) in out

    code, out, err = await monitord("check", "-c", str(path), "--json")
    assert code == 1 and not err, err
    served = {m["id"] for r in orjson.loads(out) for m in r["models"]}
    assert served == set(HOSTILE_IDS)  # JSON keeps the data exact; only terminals get the escaped form


async def test_health_and_rank_render_hostile_server_data_as_plain_text(tmp_path: Path, sqlite_url: str,
                                                                       provider_double: Any) -> None:
    double = await provider_double("vllm", models=HOSTILE_IDS)
    doc = config_doc({"alpha": double.url, "beta": double.url}, beta={"models": [MISSING_ID]})
    async with serving(doc, sqlite_url) as daemon:
        await eventually(lambda: daemon.first_round_done, what="first round")
        cli_config = tmp_path / "monitord.yaml"
        cli_config.write_text(yaml.safe_dump({**doc, "api": {"listen": f"127.0.0.1:{daemon.api_port}",
                                                              "token": TOKEN}}))
        code, out, err = await monitord("health", "-c", str(cli_config))
        assert code == 1, (out, err)  # beta degraded
        assert_plain(out + err)
        assert "alpha" in out and "[bold red]x[/bold red]" in out and "model_missing" in out

        code, out, err = await monitord("rank", "-c", str(cli_config))
        assert code == 0, (out, err)
        assert_plain(out + err)
        assert "[/]" in out and "alpha" in out


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_the_bearer_scheme_is_case_insensitive(scheme: str, sqlite_url: str, provider_double: Any) -> None:
    double = await provider_double("vllm")
    async with serving(config_doc({"alpha": double.url}), sqlite_url) as daemon, aiohttp.ClientSession() as http:
        api = f"http://127.0.0.1:{daemon.api_port}"
        async with http.get(f"{api}/v1/providers", headers={"Authorization": f"{scheme} {TOKEN}"}) as reply:
            assert reply.status == 200, await reply.text()
        for refused in (f"{scheme} wrong-token", f"Basic {TOKEN}", TOKEN, f"{scheme}"):
            async with http.get(f"{api}/v1/providers", headers={"Authorization": refused}) as reply:
                await assert_error(reply, 401, "unauthorized")


def assert_no_password(text: str, where: str) -> None:
    for part in PASSWORD_PARTS:
        assert part not in text, f"{where} shows part of the password ({part!r}): {text[:2000]}"


async def test_a_password_with_at_signs_is_never_shown(tmp_path: Path, sqlite_url: str,
                                                       provider_double: Any) -> None:
    double = await provider_double("vllm")
    endpoint = double.url.replace("http://", f"http://admin:{PASSWORD}@")
    doc = config_doc({"alpha": endpoint})
    path = tmp_path / "monitord.yaml"
    path.write_text(yaml.safe_dump({**doc, "storage": {"url": sqlite_url}}))

    code, out, err = await monitord("config", "check", "-c", str(path))
    assert code == 0, err
    assert_no_password(out + err, "config check")
    assert f"http://***@127.0.0.1:{double.port}" in out

    for args in (("check", "-c", str(path)), ("check", "-c", str(path), "--json")):
        code, out, err = await monitord(*args)
        assert_no_password(out + err, " ".join(args[:1] + args[3:]))
        assert f"***@127.0.0.1:{double.port}" in out

    # a password that makes the URL invalid is not shown in the error either
    broken = {**doc, "providers": {"alpha": {"type": "vllm", "endpoint": f"http://admin:pa/{PASSWORD}@127.0.0.1:1"}}}
    path.write_text(yaml.safe_dump(broken))
    code, out, err = await monitord("config", "check", "-c", str(path))
    assert code == 2
    assert_no_password(out + err, "the config error")

    with capture_logs() as logs:
        async with serving(doc, sqlite_url) as daemon, aiohttp.ClientSession() as http:
            await eventually(lambda: daemon.first_round_done, what="first round")
            api = f"http://127.0.0.1:{daemon.api_port}"
            for route in ("/v1/providers", "/v1/providers/alpha", "/v1/ranking", "/metrics"):
                async with http.get(f"{api}{route}", headers={"Authorization": f"Bearer {TOKEN}"}) as reply:
                    assert reply.status == 200
                    assert_no_password(await reply.text(), route)
    assert_no_password(repr(logs), "the log")
    assert await stored_endpoints(sqlite_url) == [f"http://***@127.0.0.1:{double.port}"]


async def stored_endpoints(url: str) -> list[str]:
    from sqlalchemy import select

    from monitord.store import dialects
    from monitord.store.schema import providers

    engine = dialects.create_engine(url)
    try:
        async with engine.connect() as conn:
            return [row[0] for row in await conn.execute(select(providers.c.endpoint))]
    finally:
        await engine.dispose()


@pytest.mark.parametrize(("url", "shown"), [
    ("http://u:p@ss@h:80/x", "http://***@h:80/x"),
    ("http://u:p:ss@h", "http://***@h"),
    ("http://u:pa/ss@h:8000/v1", "http://***@h:8000/v1"),
    ("http://u:p?ss@h", "http://***@h"),
    ("http://u:p#ss@h:1", "http://***@h:1"),
    ("http://user:12/34@host", "http://***@host"),
    ("u:p@ss@h:80", "***@h:80"),
    ("http://[::1]:80/x", "http://[::1]:80/x"),
    ("http://h:80/a/b@c", "http://h:80/a/b@c"),
])
def test_redact_url_with_hostile_userinfo(url: str, shown: str) -> None:
    assert redact_url(url) == shown
