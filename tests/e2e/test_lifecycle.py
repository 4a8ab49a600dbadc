"""Start-up and background failures as an operator sees them: a busy port, an unreachable database and a database
at a revision this code does not know each end `monitord run` with exit 1 and one `daemon.failed` line (no
traceback); a background task that fails logs `task.failed` and stops the daemon with a non-zero exit."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from structlog.testing import capture_logs

from monitord.config import parse_config
from monitord.daemon import Daemon
from monitord.ranking_service import BestUpdate
from monitord.store import migrate
from tests.e2e.test_run import start_monitord, sync_engine, write_config

pytestmark = pytest.mark.e2e


async def run_to_exit(config: Path) -> tuple[int, list[str], str]:
    proc = await start_monitord("run", "-c", str(config))
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    text_err = stderr.decode()
    return proc.returncode, text_err.splitlines(), text_err


NOWHERE = {"a": ("ollama", "http://127.0.0.1:9")}  # a provider is required; it is never probed here


def failed_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if '"daemon.failed"' in line]


async def test_a_busy_port_is_one_line_and_exit_1(tmp_path: Path, sqlite_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = write_config(tmp_path / "monitord.yaml", NOWHERE, sqlite_url)
        config.write_text(config.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
        code, lines, err = await run_to_exit(config)
    assert code == 1, err
    assert "Traceback" not in err
    [line] = failed_lines(lines)
    assert '"step": "api"' in line and "address already in use" in line.lower()


async def test_an_unreachable_database_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = write_config(tmp_path / "monitord.yaml", NOWHERE, f"postgresql+asyncpg://postgres@127.0.0.1:{port}/none")
    code, lines, err = await run_to_exit(config)
    assert code == 1, err
    assert "Traceback" not in err
    [line] = failed_lines(lines)
    assert '"step": "migrate"' in line


async def test_a_database_from_a_newer_monitord_is_one_line_and_exit_1(tmp_path: Path, db_url: str) -> None:
    await migrate.upgrade(db_url)
    engine = sync_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        engine.dispose()
    code, lines, err = await run_to_exit(write_config(tmp_path / "monitord.yaml", NOWHERE, db_url))
    assert code == 1, err
    assert "Traceback" not in err
    [line] = failed_lines(lines)
    assert '"step": "migrate"' in line and "9999" in line


async def test_a_failing_background_task_stops_the_daemon_with_exit_1(sqlite_url: str, provider_double: Any) -> None:
    double = await provider_double("ollama")
    config = parse_config(f"""
providers:
  a: {{type: ollama, endpoint: "{double.url}", parameters: {{probe_interval: 100ms, max_retries: 0}}}}
storage: {{url: "{sqlite_url}"}}
api: {{listen: "127.0.0.1:0"}}
""")
    daemon = Daemon(config, install_signal_handlers=False)

    def broken(update: BestUpdate) -> None:  # a bug in a subscriber of the best-provider watch
        if update.current is not None:
            raise RuntimeError("listener bug")

    daemon.rankings.subscribe(broken)
    with capture_logs() as logs:
        code = await asyncio.wait_for(daemon.run(), timeout=60)
    assert code == 1
    failed = [e for e in logs if e["event"] == "task.failed"]
    assert [(e["task"], e["error"], e["error_class"]) for e in failed] == [
        ("ranking.watch", "listener bug", "RuntimeError")]
    assert [e["event"] for e in logs][-1] == "daemon.stopped"
    assert any(e["event"] == "daemon.failed" and e["step"] == "run" for e in logs)
