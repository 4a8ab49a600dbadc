"""The `monitord` command as a user runs it: real subprocesses, exit codes, tables, JSON, --help."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from monitord.providers import ADAPTERS
from tests.doubles import DOUBLES

REPO = Path(__file__).resolve().parents[1]


async def monitord(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitord", *args, cwd=REPO, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "200", **(env or {})})
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def config_for(path: Path, providers: dict[str, tuple[str, str]], extra: str = "") -> Path:
    lines = ["providers:"]
    for name, (provider_type, url) in providers.items():
        lines += [f"  {name}:", f"    type: {provider_type}", f"    endpoint: {url}",
                  "    parameters: {timeout: 1s, max_retries: 0}"]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def test_every_adapter_has_a_double() -> None:
    assert set(ADAPTERS) <= set(DOUBLES), f"types without a double: {sorted(set(ADAPTERS) - set(DOUBLES))}"


async def test_check_all_against_a_double_of_every_type(tmp_path: Path, provider_double: Any) -> None:
    """The issue's yardstick: `monitord check --all` prints the right status for each of the 16+ types."""
    providers = {}
    for provider_type in sorted(ADAPTERS):
        double = await provider_double(provider_type)
        providers[f"{provider_type}-up"] = (provider_type, double.url)
    config = config_for(tmp_path / "c.yaml", providers)
    code, out, err = await monitord("check", "--all", "--json", "-c", str(config))
    results = {r["provider"]: r for r in orjson.loads(out)}
    not_up = {n: (r["status"], r["error"]) for n, r in results.items() if r["status"] != "up"}
    assert not not_up and code == 0, (not_up, err)
    assert all(r["models"] for r in results.values())

    code, table, _ = await monitord("check", "--all", "-c", str(config))
    assert code == 0
    assert all(name in table for name in providers) and f"{len(providers)}/{len(providers)} up" in table


async def test_check_reports_failures_and_exits_1(tmp_path: Path, provider_double: Any) -> None:
    up = await provider_double("vllm")
    down = await provider_double("vllm", "down")
    loading = await provider_double("llamacpp", "loading")
    html = await provider_double("ollama", "html")
    config = config_for(tmp_path / "c.yaml", {"up": ("vllm", up.url), "down": ("vllm", down.url),
                                              "loading": ("llamacpp", loading.url), "html": ("ollama", html.url)})
    code, out, _ = await monitord("check", "--all", "--json", "-c", str(config))
    got = {r["provider"]: (r["status"], r["error_class"]) for r in orjson.loads(out)}
    assert code == 1
    assert got == {"up": ("up", None), "down": ("down", "refused"), "loading": ("loading", "loading"),
                   "html": ("down", "bad_payload")}
    code, out, _ = await monitord("check", "--provider", "up", "-c", str(config))
    assert code == 0 and "1/1 up" in out
    code, _, err = await monitord("check", "--provider", "nope", "-c", str(config))
    assert code == 2 and "unknown provider" in err


async def test_config_check_redacts_secrets(tmp_path: Path) -> None:
    config = config_for(tmp_path / "c.yaml", {"v": ("vllm", "http://user:pw-in-url@127.0.0.1:8000")})
    config.write_text(config.read_text().replace("    parameters:", "    api_key: ${SECRET_KEY}\n    parameters:"))
    code, out, err = await monitord("config", "check", "-c", str(config), env={"SECRET_KEY": "sk-very-secret"})
    assert code == 0, err
    assert "sk-very-secret" not in out and "pw-in-url" not in out and "***" in out


@pytest.mark.parametrize("command", [[], ["run"], ["check"], ["migrate"], ["config", "check"], ["alert", "test"],
                                     ["health"], ["rank"], ["monitor"]])
async def test_help_teaches(command: list[str]) -> None:
    code, out, _ = await monitord(*command, "--help")
    assert code == 0 and "usage: monitord" in out
    if not command:
        assert "examples:" in out and "exit codes:" in out


async def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    code, _, err = await monitord("check", "-c", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml" in err and "Traceback" not in err


async def test_alert_test_sends_a_signed_test_event(tmp_path: Path) -> None:
    from tests.doubles.webhook_receiver import WebhookReceiver

    async with WebhookReceiver() as good, WebhookReceiver() as bad:
        bad.reject(400)
        config = config_for(tmp_path / "c.yaml", {"a": ("vllm", "http://127.0.0.1:9")}, extra=(
            f"storage:\n  url: sqlite+aiosqlite:///{tmp_path / 'a.db'}\n"
            f"alerts:\n  webhooks:\n    - name: good\n      url: {good.url}\n      secret: s3cret-key\n"
            f"    - name: bad\n      url: {bad.url}\n"))
        code, out, err = await monitord("alert", "test", "--sink", "good", "-c", str(config))
        assert code == 0, (out, err)
        assert "delivered" in out and len(good.requests) == 1 and not bad.requests
        request = good.requests[0]
        assert request.header("X-Monitord-Event") == "test" and request.signature_valid("s3cret-key")
        assert "s3cret-key" not in out + err

        code, out, _ = await monitord("alert", "test", "-c", str(config), "--timeout", "2")
        assert code == 1 and "failed" in out and len(bad.requests) == 1
        code, _, err = await monitord("alert", "test", "--sink", "nope", "-c", str(config))
        assert code == 2 and "unknown webhook" in err
