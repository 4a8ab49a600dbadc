"""The README's production install, run as written: build a wheel, `systemd/install.sh` it into a fresh venv
(runtime dependencies only, no editable install, nothing from this checkout on the path), then the installed
`monitord` checks the config, migrates and runs under a real sd_notify socket on SQLite and on PostgreSQL, and a
SIGTERM stops it with exit 0.

The venv is built once per module (a real `pip install` of the wheel and its dependencies takes a while)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.e2e.test_run import STARTED, probe_rows, wait_for_rows, write_config
from tests.e2e.test_signals import NotifySocket

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]  # the first test builds the venv

REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT_S = 540.0  # wheel build + pip install of every runtime dependency on a loaded machine


@dataclass(frozen=True)
class Installed:
    prefix: Path
    monitord: Path  # the symlink the unit's ExecStart names
    conf_dir: Path
    unit_dir: Path
    wheel: Path


def _clean_env() -> dict[str, str]:
    """The environment of a shell that never saw this checkout's venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("install")
    source = root / "src"  # a copy, so building leaves no build/ or egg-info in the checkout
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "*.db", "*.db-*", "__pycache__", ".*_cache", "build", "dist", "*.egg-info"))
    env = _clean_env()
    # README, "Running in production": the two commands, with every place moved under `root`.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(root / "dist"), "."],
                   cwd=source, env=env, check=True, timeout=INSTALL_TIMEOUT_S)
    wheel = next((root / "dist").glob("monitord-*.whl"))
    places = {"PREFIX": str(root / "opt" / "monitord"), "BIN_LINK": str(root / "usr" / "bin" / "monitord"),
              "CONF_DIR": str(root / "etc" / "monitord"), "UNIT_DIR": str(root / "etc" / "systemd" / "system"),
              "PYTHON": sys.executable}  # the interpreter; `-m venv` makes a fresh venv without this one's packages
    done = subprocess.run(["sh", str(source / "systemd" / "install.sh"), str(wheel)], cwd=root,
                          env={**env, **places}, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    yield Installed(prefix=Path(places["PREFIX"]), monitord=Path(places["BIN_LINK"]),
                    conf_dir=Path(places["CONF_DIR"]), unit_dir=Path(places["UNIT_DIR"]), wheel=wheel)


def test_the_wheel_carries_the_migrations_and_nothing_from_the_checkout(installed: Installed) -> None:
    probe = subprocess.run(
        [str(installed.prefix / "bin" / "python"), "-c",
         "import monitord, monitord.store.migrate as m; print(monitord.__file__); print(m.head()); "
         "import importlib.util as u; print(u.find_spec('pytest') is None)"],
        cwd=installed.prefix, env=_clean_env(), capture_output=True, text=True, timeout=60, check=True)
    module_file, head, no_pytest = probe.stdout.split()
    assert Path(module_file).is_relative_to(installed.prefix), module_file
    revisions = (REPO / "monitord" / "migrations" / "versions").glob("0*.py")
    assert head == max(p.name.split("_")[0] for p in revisions)
    assert no_pytest == "True"  # runtime dependencies only
    unit = (installed.unit_dir / "monitord.service").read_text()
    assert unit == (REPO / "systemd" / "monitord.service").read_text()
    assert (installed.conf_dir / "env").stat().st_mode & 0o777 == 0o600


async def _installed(installed: Installed, *args: str, cwd: Path,
                     env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        str(installed.monitord), *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**_clean_env(), **(env or {})})
    STARTED.append(proc)
    return proc


def _events(stderr: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stderr.splitlines() if line.startswith(b"{")]


async def test_installed_monitord_checks_migrates_runs_and_stops(
        installed: Installed, db_url: str, provider_double: Any, tmp_path: Path) -> None:
    url = db_url
    double = await provider_double("ollama")
    with socket.socket() as probe_port:
        probe_port.bind(("127.0.0.1", 0))
        port = probe_port.getsockname()[1]
    config = write_config(installed.conf_dir / "monitord.yaml", {"local": ("ollama", double.url)}, url)
    config.write_text(config.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))

    check = await _installed(installed, "check", "-c", str(config), cwd=tmp_path)
    out, err = await asyncio.wait_for(check.communicate(), timeout=60)
    assert check.returncode == 0, (out + err).decode()
    assert b"local" in out

    migrate = await _installed(installed, "migrate", "-c", str(config), cwd=tmp_path)
    _, err = await asyncio.wait_for(migrate.communicate(), timeout=60)
    assert migrate.returncode == 0, err.decode()
    events = _events(err)
    assert [e["revision"] for e in events if e["event"] == "migration.upgraded"][-1:] == [await _head(installed)]
    assert all("." in e["event"] for e in events), [e["event"] for e in events]

    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        run = await _installed(installed, "run", "-c", str(config), cwd=tmp_path,
                               env={"NOTIFY_SOCKET": str(notify.path)})
        await notify.wait_for("READY=1", timeout_s=60)
        await wait_for_rows(url, 2, timeout_s=60)
        async with aiohttp.ClientSession() as http:  # the status page's files came with the wheel too
            for path, kind in (("/", "text/html"), ("/ui/page.js", "javascript"), ("/ui/page.css", "text/css")):
                async with http.get(f"http://127.0.0.1:{port}{path}") as response:
                    assert response.status == 200 and kind in response.content_type, path
        run.send_signal(signal.SIGTERM)
        await notify.wait_for("STOPPING=1")
        _, err = await asyncio.wait_for(run.communicate(), timeout=30)
    finally:
        notify.close()
    assert run.returncode == 0, err.decode()
    names = [e["event"] for e in _events(err)]
    assert "daemon.started" in names and names[-1] == "daemon.stopped"
    assert {status for provider, status, _ in probe_rows(url) if provider == "local"} == {"up"}


async def _head(installed: Installed) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(installed.prefix / "bin" / "python"), "-c", "import monitord.store.migrate as m; print(m.head())",
        stdout=asyncio.subprocess.PIPE, env=_clean_env(), cwd=installed.prefix)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    return out.decode().strip()
