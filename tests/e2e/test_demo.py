"""`monitord demo` as a user runs it: a subprocess with a fast story; its output and API show the transitions,
and it cleans up after itself at the story's end and on Ctrl-C (SIGINT)."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.test_run import STARTED

pytestmark = pytest.mark.e2e

URL = re.compile(r"status page at (http://127\.0\.0\.1:\d+)/")
DATABASE = re.compile(r"database (\S+) \(removed at the end\)")


class Demo:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def wait_for(self, pattern: str, timeout_s: float = 60.0) -> re.Match[str]:
        """The first output line matching `pattern`, reading more output until it comes or the deadline passes."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        index = 0
        while True:
            while index < len(self.lines):
                found = regex.search(self.lines[index])
                index += 1
                if found:
                    return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matches {pattern!r} within {timeout_s}s:\n" + "\n".join(self.lines))
            assert self.proc.stdout is not None
            raw = await asyncio.wait_for(self.proc.stdout.readline(), left)
            if not raw:
                raise AssertionError(f"the demo ended before {pattern!r}:\n" + "\n".join(self.lines))
            self.lines.append(raw.decode().rstrip("\n"))


async def start_demo(*args: str) -> Demo:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "monitord", "demo", "--port", "0", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    STARTED.append(proc)
    return Demo(proc)


async def test_the_story_plays_out_on_the_api_and_in_the_output() -> None:
    demo = await start_demo("--speed", "6", "--exit-after-story")
    url = (await demo.wait_for(URL.pattern))[1]
    database = Path((await demo.wait_for(DATABASE.pattern))[1])
    assert await asyncio.to_thread(database.exists)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/v1/providers") as resp:
            body = await resp.json()
        assert {p["name"]: p["type"] for p in body["providers"]} == {
            "gpu": "llamacpp", "laptop": "ollama", "box": "vllm", "busy": "llamacpp", "story": "koboldcpp"}
        async with http.get(f"{url}/") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
    await demo.wait_for(r"status +gpu: \w+ -> loading")
    await demo.wait_for(r"alert +provider\.loading gpu")
    await demo.wait_for(r"status +gpu: loading -> up")
    await demo.wait_for(r"story +box \(vLLM\) stalls")
    await demo.wait_for(r"alert +provider\.stalled box: up -> stalled \(generation_timeout")  # the canary saw it
    await demo.wait_for(r"story +story \(KoboldCpp\) dies")
    await demo.wait_for(r"alert +provider\.down story: up -> down \(refused")
    await demo.wait_for(r"alert +provider\.up story: down -> up")
    await demo.wait_for(r"alert +provider\.up box: stalled -> up")
    await demo.wait_for(r"the story is over")
    await demo.wait_for(r"cleaned up")
    assert await asyncio.wait_for(demo.proc.wait(), 30) == 0
    assert not await asyncio.to_thread(database.parent.exists)
    shown = "\n".join(demo.lines)
    assert "Traceback" not in shown and "[warning" not in shown and "[error" not in shown


async def test_ctrl_c_stops_the_demo_and_removes_what_it_made() -> None:
    demo = await start_demo()
    url = (await demo.wait_for(URL.pattern))[1]
    database = Path((await demo.wait_for(DATABASE.pattern))[1])
    await demo.wait_for(r"status +gpu: \w+ -> loading")
    ports = [int(port) for port in re.findall(r"http://127\.0\.0\.1:(\d+)", "\n".join(demo.lines))]
    demo.proc.send_signal(signal.SIGINT)
    await demo.wait_for(r"cleaned up", timeout_s=30)
    assert await asyncio.wait_for(demo.proc.wait(), 30) == 0
    assert not await asyncio.to_thread(database.parent.exists)
    for port in set(ports):  # the daemon and every simulated server are gone
        with pytest.raises(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
    assert url


async def test_a_busy_port_is_a_clear_error_not_a_traceback() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "monitord", "demo", "--port", str(port),
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        STARTED.append(proc)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        server.close()
        await server.wait_closed()
    assert proc.returncode == 1
    assert "address already in use" in err.decode() and "--port 0" in err.decode()
    assert b"Traceback" not in out + err
