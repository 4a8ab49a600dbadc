"""`monitord check --generate`: one real canary per provider that answers, as a user runs it (a subprocess)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from monitord.providers import ADAPTERS
from tests.test_cli import monitord


def config_for(path: Path, providers: dict[str, tuple[str, str]]) -> Path:
    lines = ["providers:"]
    for name, (provider_type, url) in providers.items():
        lines += [f"  {name}:", f"    type: {provider_type}", f"    endpoint: {url}",
                  "    parameters: {timeout: 2s, max_retries: 0, canary: {deadline: 1s, timeout: 5s}}"]
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_check_generate_runs_a_canary_on_every_type(tmp_path: Path, provider_double: Any) -> None:
    providers = {}
    for provider_type in sorted(ADAPTERS):
        double = await provider_double(provider_type)
        providers[provider_type] = (provider_type, double.url)
    config = config_for(tmp_path / "c.yaml", providers)

    code, out, err = await monitord("check", "--all", "--generate", "--json", "-c", str(config))

    rows = {r["provider"]: r for r in orjson.loads(out)}
    failed = {name: (r["generation"] or {}).get("error") for name, r in rows.items()
              if not (r["generation"] or {}).get("ok")}
    assert not failed and code == 0, (failed, err)
    streamed = [name for name, r in rows.items() if r["generation"]["streamed"]]
    assert "gpt4all" not in streamed and {"vllm", "ollama", "llamacpp", "koboldcpp", "tgi"} <= set(streamed)
    for name in streamed:
        generation = rows[name]["generation"]
        assert generation["ttft_ms"] is not None and generation["stream_complete"] is True, name


async def test_check_generate_shows_ttft_and_tokens_per_s_and_fails_on_a_stall(tmp_path: Path,
                                                                               provider_double: Any) -> None:
    good = await provider_double("vllm", token_interval_s=0.02)
    stalled = await provider_double("ollama", generation="stall_before_first")
    busy = await provider_double("llamacpp", slots_busy=True)
    down = await provider_double("vllm", "down")
    config = config_for(tmp_path / "c.yaml", {"good": ("vllm", good.url), "stalled": ("ollama", stalled.url),
                                              "busy": ("llamacpp", busy.url), "down": ("vllm", down.url)})

    code, out, _ = await monitord("check", "--all", "--generate", "--json", "-c", str(config))

    rows = {r["provider"]: r for r in orjson.loads(out)}
    assert code == 1
    assert rows["good"]["generation"]["ok"] and rows["good"]["generation"]["tokens_per_s"] > 0
    assert rows["stalled"]["generation"]["error_class"] == "generation_timeout"
    assert (rows["busy"]["generation"]["skipped"], rows["busy"]["generation"]["error_class"]) == (True, "busy")
    assert rows["down"]["generation"] is None  # no canary for a server that does not answer

    await stalled.set("up", generation="normal")
    await down.set("up")
    code, table, _ = await monitord("check", "--provider", "good", "--provider", "stalled", "--generate",
                                    "-c", str(config))
    assert code == 0
    header = table.splitlines()[0]
    assert "TTFT" in header and "TOK/S" in header and " ms" in table
