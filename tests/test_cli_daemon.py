"""Commands that talk to the daemon, as a user runs them: --url and MONITORD_URL without a config file, `monitor`
in its plain, JSON and one-shot modes with a truthful connection state, `health` showing an error only while it is
current, `check` telling the last attempt's latency apart from the retry back-off, and shell completion."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from monitord.cli import current_error
from monitord.config import parse_config
from monitord.daemon import Daemon
from monitord.model import Status
from tests.test_outage import eventually
from tests.tools.ports import refused_port

REPO = Path(__file__).resolve().parents[1]


async def monitord(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitord", *args, cwd=cwd, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO), **(env or {})})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.fixture
async def running(tmp_path: Path, provider_double: Any) -> AsyncIterator[tuple[Daemon, str, Any]]:
    """A daemon over two doubles (fast probes, thresholds 1/1) and one disabled provider; its URL."""
    gpu = await provider_double("llamacpp")
    cpu = await provider_double("ollama")
    fast = "{timeout: 500ms, max_retries: 0, probe_interval: 200ms}"
    text = f"""
providers:
  gpu: {{type: llamacpp, endpoint: "{gpu.url}", parameters: {fast}}}
  cpu: {{type: ollama, endpoint: "{cpu.url}", parameters: {fast}}}
  old: {{type: vllm, endpoint: "http://127.0.0.1:9", enabled: false}}
storage: {{url: "sqlite+aiosqlite:///{tmp_path / 'd.db'}", flush_interval: 50ms}}
api: {{listen: "127.0.0.1:0"}}
alerts: {{failure_threshold: 1, success_threshold: 1}}
"""
    daemon = Daemon(parse_config(text), install_signal_handlers=False)
    await daemon.start()
    try:
        await eventually(lambda: daemon.first_round_done, what="first round")
        yield daemon, f"http://127.0.0.1:{daemon.api_port}", gpu
    finally:
        await daemon.stop()


async def test_url_and_monitord_url_need_no_config_file(running: Any, tmp_path: Path) -> None:
    _, url, _ = running
    elsewhere = tmp_path / "no-config-here"
    elsewhere.mkdir()
    code, out, err = await monitord("health", "--url", url, "--json", cwd=elsewhere)
    assert code == 0, err
    statuses = {p["name"]: p["status"] for p in orjson.loads(out)["providers"]}
    assert statuses == {"gpu": "up", "cpu": "up", "old": "disabled"}  # disabled on purpose: exit 0 all the same
    code, out, err = await monitord("rank", "--json", cwd=elsewhere, env={"MONITORD_URL": url})
    assert code == 0, err
    assert [e["provider"] for e in orjson.loads(out)["ranking"]] != []
    code, out, err = await monitord("monitor", "--once", cwd=elsewhere, env={"MONITORD_URL": url})
    assert code == 0, err
    assert {line.split()[1] for line in out.splitlines()} == {"gpu", "cpu", "old"}
    code, _, err = await monitord("health", "--url", f"http://127.0.0.1:{refused_port()}", cwd=elsewhere)
    assert code == 1 and "no daemon answers" in err


async def test_api_numbers_are_rounded_as_documented(running: Any) -> None:
    import aiohttp

    _, url, _ = running
    async with aiohttp.ClientSession() as http, http.get(f"{url}/v1/providers") as resp:
        body = await resp.json()
    for p in body["providers"]:
        for key in ("latency_p50_ms", "latency_p95_ms", "latency_ewma_ms"):
            if p[key] is not None:
                assert round(p[key], 3) == p[key], (key, p[key])
        if p["availability"] is not None:
            assert round(p["availability"], 6) == p["availability"]


async def test_monitor_prints_plain_lines_when_not_on_a_terminal(running: Any, tmp_path: Path) -> None:
    _, url, gpu = running
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitord", "monitor", "--url", url, cwd=tmp_path, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    try:
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 30)).decode() for _ in range(4)]
        assert {line.split()[1] for line in lines[:3]} == {"cpu", "gpu", "old"}
        assert "# live: following events from" in lines[3]
        await gpu.set("down")
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        while "gpu: up -> down" not in line:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert "refused" in line
    finally:
        proc.terminate()
        await proc.wait()


async def test_monitor_json_lines_and_the_state_of_the_connection(running: Any, tmp_path: Path) -> None:
    daemon, url, gpu = running
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitord", "monitor", "--url", url, "--json", cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    try:
        first = orjson.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert first["kind"] == "snapshot" and {p["name"] for p in first["providers"]} == {"gpu", "cpu", "old"}
        second = orjson.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert second == {"kind": "connection", "state": "live", "url": url, "problem": None}
        await gpu.set("down")
        while True:
            event = orjson.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
            if event["kind"] == "provider.status_changed" and event["data"]["provider"] == "gpu":
                break
        assert event["data"]["current"] == "down"
        await daemon.stop()  # the daemon goes away: the monitor says so instead of showing stale data as live
        while True:
            line = orjson.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
            if line["kind"] == "connection":
                break
        assert line["state"] == "unreachable" and line["problem"]
    finally:
        proc.terminate()
        await proc.wait()


async def test_monitor_once_without_a_daemon_fails(tmp_path: Path) -> None:
    code, out, err = await monitord("monitor", "--once", "--url", f"http://127.0.0.1:{refused_port()}", cwd=tmp_path)
    assert code == 1 and out == "" and "did not answer" in err


NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(("error_at", "success_at", "shown"), [
    (NOW - timedelta(seconds=90), None, "refused: connection refused (1m30s ago)"),
    (NOW - timedelta(seconds=5), NOW - timedelta(minutes=1), "refused: connection refused (5s ago)"),
    (NOW - timedelta(minutes=10), NOW - timedelta(seconds=2), ""),  # recovered since: not current
])
def test_health_shows_the_last_error_only_while_it_is_current(error_at: datetime, success_at: datetime | None,
                                                               shown: str) -> None:
    provider = {"status": Status.DOWN.value, "last_error_class": "refused", "last_error": "connection refused",
                "last_error_at": error_at.isoformat(),
                "last_success_at": success_at.isoformat() if success_at else None}
    assert current_error(provider, NOW) == shown


async def test_check_reports_the_last_attempt_apart_from_the_back_off(tmp_path: Path) -> None:
    port = refused_port()  # nothing listens: every attempt is refused at once
    config = tmp_path / "c.yaml"
    config.write_text(f"""providers:
  gone: {{type: vllm, endpoint: "http://127.0.0.1:{port}", parameters: {{max_retries: 2, retry_backoff: 300ms}}}}
storage: {{url: "sqlite+aiosqlite:///{tmp_path / 'c.db'}"}}
""")
    code, out, _ = await monitord("check", "--json", "-c", str(config), cwd=tmp_path)
    (result,) = orjson.loads(out)
    assert code == 1 and result["attempts"] == 3
    assert result["backoff_ms"] == 900.0  # 300 ms, then 600 ms
    assert result["latency_ms"]["last_attempt"] < 300  # a refusal is quick; the back-off is not its latency
    assert result["latency_ms"]["total"] >= 900
    code, table, _ = await monitord("check", "-c", str(config), cwd=tmp_path)
    row = next(line for line in table.splitlines() if "gone" in line)
    assert "2 (+900 ms back-off)" in row


def test_bash_completion_offers_commands_options_and_choices(tmp_path: Path) -> None:
    import subprocess

    script = subprocess.run([sys.executable, "-m", "monitord", "completion", "bash"], capture_output=True, text=True,
                            check=True, cwd=REPO).stdout

    def complete(*words: str) -> set[str]:
        probe = (f'{script}\nCOMP_WORDS=({" ".join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}; '
                 '_monitord_complete; printf "%s\\n" "${COMPREPLY[@]}"')
        done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
        return set(done.stdout.split())

    assert complete("monitord", "mo") == {"monitor"}
    assert {"demo", "completion", "health", "rank", "check"} <= complete("monitord", "")
    assert {"--url", "--once", "--json", "--provider"} <= complete("monitord", "monitor", "--")
    assert complete("monitord", "rank", "--quality", "") == {"fast", "balanced", "quality"}
    assert complete("monitord", "completion", "") >= {"bash", "zsh"}
    assert complete("monitord", "alert", "") >= {"test"}


@pytest.mark.skipif(shutil.which("zsh") is None and not os.environ.get("CI"), reason="zsh is not installed")
def test_zsh_completion_is_a_valid_compdef(tmp_path: Path) -> None:
    import subprocess

    script = subprocess.run([sys.executable, "-m", "monitord", "completion", "zsh"], capture_output=True, text=True,
                            check=True, cwd=REPO).stdout
    assert script.startswith("#compdef monitord")
    path = tmp_path / "_monitord"
    path.write_text(script)
    subprocess.run(["zsh", "-n", str(path)], check=True)
    # loaded into a real zsh with compinit, the function is defined and registered for `monitord`
    probe = (f"autoload -U compinit; compinit -u -d {tmp_path}/zcomp; fpath=({tmp_path} $fpath); "
             "autoload -U _monitord; compdef _monitord monitord; print -r -- $_comps[monitord]")
    done = subprocess.run(["zsh", "-f", "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "_monitord"
    assert "_monitord_monitor()" in script and "'--url[]'" in script and "(bash zsh)" in script
