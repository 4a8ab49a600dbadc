"""The `monitord` command: parses arguments and calls into the daemon. Every command returns an exit code.

Exit codes: 0 success, 1 a check found providers not up (or the daemon failed), 2 bad config or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import structlog
from rich.console import Console
from rich.table import Table
from rich.text import Text

from monitord import __version__, logs
from monitord.config import Config, ConfigError, load_config
from monitord.model import GenerationSample, ProbeResult, QualityPreference, Secret, Status, TaskType
from monitord.text import safe_text

if TYPE_CHECKING:
    from monitord.client import MonitordClient, ProvidersAnswer, RankingAnswer

T = TypeVar("T")

STATUS_STYLE = {"up": "green", "degraded": "yellow", "suspect": "yellow", "loading": "cyan", "down": "red",
                "stalled": "red", "misconfigured": "magenta", "unknown": "dim", "disabled": "dim"}

EPILOG = """\
configuration:
  -c/--config FILE, else $MONITORD_CONFIG, else ./monitord.yaml, else /etc/monitord/monitord.yaml.
  Secrets come from the environment: api_key: ${VLLM_API_KEY}

examples:
  monitord config check -c monitord.yaml     validate and show the effective config (secrets redacted)
  monitord check --all                       probe every provider now and print a table (exit 1 if any not up)
  monitord check --provider vllm --json      one provider, machine-readable
  monitord migrate                           create or upgrade the database schema
  monitord run                               run the daemon (SIGTERM stops cleanly, SIGHUP reloads the config)
  monitord health --all                      ask the running daemon how every provider is
  monitord rank --task-type chat --capability vision   the ranking, with the parts of every score
  monitord monitor                           live view of status changes (Ctrl-C to leave)

exit codes: 0 ok, 1 a provider is not up / the daemon failed, 2 bad config or usage.
"""


def default_config_path() -> Path:
    if env := os.environ.get("MONITORD_CONFIG"):
        return Path(env)
    local = Path("monitord.yaml")
    return local if local.exists() else Path("/etc/monitord/monitord.yaml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monitord",
        description="Monitor local LLM inference servers: probe them, record every probe, rank the best one.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"monitord {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, *, asks_daemon: bool = False) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("-c", "--config", type=Path, default=None,
                         help="config file (default: $MONITORD_CONFIG, ./monitord.yaml, /etc/monitord/monitord.yaml)")
        if asks_daemon:
            sub.add_argument("--url", default=None, metavar="URL",
                             help="the daemon's API (default: $MONITORD_URL, else the config's api.listen); the "
                                  "token comes from $MONITORD_API_TOKEN, else the config's api.token")
        return sub

    command("run", "Run the daemon: migrate, probe on schedule, record, serve; stop on SIGTERM/SIGINT.")
    check = command("check", "Probe providers once now, without the daemon, and print a table.")
    which = check.add_mutually_exclusive_group()
    which.add_argument("--provider", "-p", action="append", metavar="NAME",
                       help="probe this provider (repeatable)")
    which.add_argument("--all", action="store_true", help="probe every enabled provider (the default)")
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")
    check.add_argument("--generate", action="store_true",
                       help="also run one generation canary per provider that answers (TTFT and tokens/s columns)")
    command("migrate", "Create or upgrade the database schema to the latest version.")
    health = command("health", "Ask the running daemon how providers are (probes directly if none answers).",
                     asks_daemon=True)
    which = health.add_mutually_exclusive_group()
    which.add_argument("--provider", "-p", action="append", metavar="NAME", help="this provider (repeatable)")
    which.add_argument("--all", action="store_true", help="every configured provider (the default)")
    health.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rank = command("rank", "Ask the running daemon for the ranking, with the parts of every score.", asks_daemon=True)
    rank.add_argument("--task-type", metavar="TYPE", help=f"one of: {', '.join(t.value for t in TaskType)}")
    rank.add_argument("--capability", action="append", metavar="NAME",
                      help="required capability, e.g. vision, tools (repeatable)")
    rank.add_argument("--max-tokens", type=int, metavar="N", help="leave out providers with a smaller context")
    rank.add_argument("--quality", choices=[q.value for q in QualityPreference], help="default: balanced")
    rank.add_argument("--model", help="model id or glob (* ? [...])")
    rank.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    monitor = command("monitor", "Live view of provider status from the daemon's event stream (Ctrl-C to leave).",
                      asks_daemon=True)
    monitor.add_argument("--provider", "-p", metavar="NAME", help="follow this provider only")
    monitor.add_argument("--once", action="store_true", help="print the providers once and exit")
    monitor.add_argument("--json", action="store_true",
                         help="one JSON object per line (snapshot, events, connection changes)")
    completion = commands.add_parser("completion", help="Print a shell completion script (bash or zsh).",
                                     description="Print a completion script: eval \"$(monitord completion bash)\" "
                                                 "in ~/.bashrc, or monitord completion zsh > ~/.zfunc/_monitord.")
    completion.add_argument("shell", choices=["bash", "zsh"])
    demo = commands.add_parser(
        "demo", help="Watch simulated servers load, slow down, stall, saturate, die and recover (no config needed).",
        description="Start simulated llama.cpp, Ollama, vLLM and KoboldCpp servers and the daemon on a temporary "
                    "SQLite file, play a two-minute story, print the status page URL and every alert; Ctrl-C "
                    "stops it and removes everything it made.")
    demo.add_argument("--port", type=int, default=8765, help="API and status page port (default 8765; 0: any free)")
    demo.add_argument("--speed", type=float, default=1.0, metavar="FACTOR",
                      help="play the story this many times faster (default 1: about two minutes)")
    demo.add_argument("--exit-after-story", action="store_true", help="stop when the story ends")
    alert = commands.add_parser("alert", help="Work with webhook alerts.")
    alert_commands = alert.add_subparsers(dest="alert_command", metavar="SUBCOMMAND", required=True)
    alert_test = alert_commands.add_parser(
        "test", help="Send a `test` event to every webhook (or one) through the real outbox and sender.",
        description="Send a `test` event to every webhook (or one) through the real outbox and sender; "
                    "exit 0 when every delivery got a 2xx.")
    alert_test.add_argument("-c", "--config", type=Path, default=None, help="config file")
    alert_test.add_argument("--sink", "--webhook", dest="sink", metavar="NAME", help="only this webhook")
    alert_test.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                            help="how long to keep retrying (default 30)")
    config = commands.add_parser("config", help="Work with the configuration file.")
    config_commands = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    config_check = config_commands.add_parser(
        "check", help="Validate the config and print the effective settings with secrets redacted.")
    config_check.add_argument("-c", "--config", type=Path, default=None, help="config file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = COMMANDS[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"monitord: invalid configuration {exc.source if hasattr(exc, 'source') else ''}".rstrip(),
              file=sys.stderr)
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _load(args: argparse.Namespace) -> tuple[Config, Path]:
    path = args.config or default_config_path()
    return load_config(path), path


def _run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed (a faster HTTP client), else the default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def cmd_run(args: argparse.Namespace) -> int:
    config, path = _load(args)
    logs.configure(config.logging.level, config.logging.format)
    from monitord.daemon import Daemon

    structlog.get_logger("monitord").info("config.loaded", path=str(path), providers=len(config.providers))
    return _run_async(Daemon(config, config_path=path).run())


def cmd_migrate(args: argparse.Namespace) -> int:
    config, _ = _load(args)
    logs.configure(config.logging.level, config.logging.format)
    from monitord.daemon import migrate

    asyncio.run(migrate(config.storage.url))
    structlog.get_logger("monitord").info("store.migrated")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    config, path = _load(args)
    import yaml

    for warning in config.warnings():
        print(f"monitord: warning: {warning}", file=sys.stderr)
    print(f"# {path}: valid ({len(config.providers)} providers)")
    print(yaml.safe_dump(config.redacted(), sort_keys=False, allow_unicode=True), end="")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config, _ = _load(args)
    logs.configure("error", "console")
    specs = config.provider_specs()
    if args.provider:
        unknown = sorted(set(args.provider) - {s.name for s in specs})
        if unknown:
            print(f"monitord: unknown provider(s): {', '.join(unknown)}; configured: "
                  f"{', '.join(s.name for s in specs)}", file=sys.stderr)
            return 2
        specs = tuple(s for s in specs if s.name in args.provider)
    else:
        specs = tuple(s for s in specs if s.enabled)
    from monitord.daemon import probe_all

    results = _run_probe_all(probe_all, specs, config.monitor.concurrency)
    samples: dict[str, GenerationSample] | None = None
    if getattr(args, "generate", False):  # health falls back here without that option
        from monitord.canary import canary_once

        samples = asyncio.run(canary_once(specs, results, concurrency=config.monitor.canary.concurrency))
    endpoints = {s.name: s.redacted_endpoint for s in specs}
    if args.json:
        rows = [result_to_dict(r, endpoints[r.provider]) for r in results]
        if samples is not None:
            for row in rows:
                sample = samples.get(row["provider"])
                row["generation"] = sample_to_dict(sample) if sample is not None else None
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    else:
        print_results_table(results, endpoints, samples)
    generated = samples is None or all(s.ok or s.skipped for s in samples.values())
    return 0 if results and all(r.status is Status.UP for r in results) and generated else 1


def sample_to_dict(sample: GenerationSample) -> dict[str, Any]:
    return {
        "model": sample.model,
        "kind": sample.kind.value,
        "ok": sample.ok,
        "skipped": sample.skipped,
        "error_class": sample.error_class.value if sample.error_class else None,
        "error": sample.error,
        "ttft_ms": _round(sample.ttft_ms),
        "tokens_per_s": _round(sample.tokens_per_s),
        "total_ms": _round(sample.total_ms),
        "prompt_tokens": sample.prompt_tokens,
        "completion_tokens": sample.completion_tokens,
        "finish_reason": sample.finish_reason,
        "streamed": sample.streamed,
        "stream_complete": sample.stream_complete,
    }


def _run_probe_all(probe_all: Callable[..., Coroutine[Any, Any, list[ProbeResult]]],
                   specs: Sequence[Any], concurrency: int) -> list[ProbeResult]:
    async def go() -> list[ProbeResult]:
        return await probe_all(specs, concurrency=concurrency)

    return asyncio.run(go())


def result_to_dict(result: ProbeResult, endpoint: str) -> dict[str, Any]:
    return {
        "provider": result.provider,
        "type": result.provider_type,
        "endpoint": endpoint,
        "status": result.status.value,
        "error_class": result.error_class.value if result.error_class else None,
        "error": result.error,
        "started_at": result.started_at.isoformat(),
        "latency_ms": {"connect": _round(result.connect_ms), "ttfb": _round(result.ttfb_ms),
                       "last_attempt": _round(result.last_attempt_ms), "total": _round(result.total_ms)},
        "backoff_ms": _round(result.backoff_ms),
        "http_status": result.http_status,
        "requests": [{"method": c.method, "path": c.path, "status": c.status, "elapsed_ms": _round(c.elapsed_ms)}
                     for c in result.calls],
        "attempts": result.attempts,
        "server_version": result.server_version,
        "models": [m.to_dict() for m in result.models],
        "saturated": result.capacity.saturated if result.capacity is not None else None,
        "capacity": result.capacity.to_dict() if result.capacity is not None else None,
        "identity": result.identity.to_dict() if result.identity is not None else None,
    }


def retries_text(result: ProbeResult) -> str:
    """'-' for one attempt; else the retries and the back-off slept between them (not part of LATENCY)."""
    if result.attempts <= 1:
        return "-"
    return f"{result.attempts - 1} (+{result.backoff_ms:.0f} ms back-off)"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def plain(value: object) -> Text:
    """Server data as a table cell: never parsed as Rich markup, control characters escaped (text.safe_text)."""
    return Text(safe_text(value))


def status_cell(status: Status | str) -> Text:
    """A status as the daemon names it; one this build does not know is shown plainly."""
    return Text(safe_text(str(status)), style=STATUS_STYLE.get(str(status), ""))


def status_load_cell(status: Status | str, saturated: bool | None) -> Text:
    """The status, with `saturated` beside it when the server's last load figures said no slot was idle."""
    cell = status_cell(status)
    if saturated:
        cell.append(" saturated", style="yellow")
    return cell


def print_results_table(results: Sequence[ProbeResult], endpoints: dict[str, str],
                        samples: Mapping[str, GenerationSample] | None = None) -> None:
    """The probe table; with `samples` (check --generate) also TTFT and tokens/s of each provider's canary."""
    console = Console(width=None if sys.stdout.isatty() else 200)
    table = Table(show_edge=False, header_style="bold")
    columns = ["PROVIDER", "TYPE", "ENDPOINT", "STATUS", "LATENCY", "RETRIES", "MODELS", "ERROR"]
    if samples is not None:
        columns[6:6] = ["TTFT", "TOK/S"]
    for column in columns:
        table.add_column(column, justify="right" if column in ("LATENCY", "RETRIES", "TTFT", "TOK/S") else "left",
                         overflow="fold" if column in ("MODELS", "ERROR") else "ellipsis")
    for r in results:
        models = ", ".join(r.model_ids[:3]) + (f" (+{len(r.models) - 3})" if len(r.models) > 3 else "")
        error = f"{r.error_class.value}: {r.error}" if r.error_class else ""
        cells: list[Any] = [plain(r.provider), r.provider_type, plain(endpoints.get(r.provider, "")),
                            status_load_cell(r.status, r.capacity.saturated if r.capacity else None),
                            _ms_text(r.last_attempt_ms if r.last_attempt_ms is not None else r.total_ms),
                            retries_text(r), plain(models or "-"), plain(error)]
        if samples is not None:
            sample = samples.get(r.provider)
            cells[6:6] = _generation_cells(sample)
            if sample is not None and not sample.ok and not error:
                what = sample.error_class.value if sample.error_class else "skipped"
                cells[-1] = plain(f"canary {what}: {sample.error}")
        table.add_row(*cells)
    console.print(table)
    up = sum(r.status is Status.UP for r in results)
    console.print(f"{up}/{len(results)} up")


def _generation_cells(sample: GenerationSample | None) -> list[str]:
    if sample is None or not sample.ok:
        return ["-", "-"]
    ttft = f"{sample.ttft_ms:.0f} ms" if sample.ttft_ms is not None else "-"
    rate = f"{sample.tokens_per_s:.1f}" if sample.tokens_per_s is not None else "-"
    return [ttft, rate]


# --- commands that ask the running daemon (health, rank, monitor) ---

def api_url(config: Config) -> str:
    """Where the daemon's API answers: api.listen, with a wildcard bind reached over loopback."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(config.api.host, config.api.host)
    return f"http://[{host}]:{config.api.port}" if ":" in host else f"http://{host}:{config.api.port}"


@dataclass(frozen=True, slots=True)
class Target:
    """The daemon a command asks, and the config when there is one (--url works without a config file)."""

    url: str
    token: Secret | None
    config: Config | None

    def client(self, **options: Any) -> MonitordClient:
        from monitord.client import MonitordClient

        return MonitordClient(self.url, token=self.token, **options)


def daemon_target(args: argparse.Namespace) -> Target:
    """--url, else $MONITORD_URL, else the config's api.listen; the token from $MONITORD_API_TOKEN, else the config.

    With a URL given and no config file at hand, no config is needed; a config named with -c must load.
    """
    url = args.url or os.environ.get("MONITORD_URL")
    config: Config | None = None
    path = args.config or default_config_path()
    if args.config is not None or url is None or path.exists():
        config = load_config(path)
    env_token = os.environ.get("MONITORD_API_TOKEN")
    token = Secret(env_token) if env_token else (config.api.token if config else None)
    if url is None:
        assert config is not None
        url = api_url(config)
    return Target(url.rstrip("/"), token, config)


def _unknown_providers(names: Sequence[str], config: Config | None) -> int | None:
    if not names or config is None:
        return None
    specs = config.provider_specs()
    unknown = sorted(set(names) - {s.name for s in specs})
    if not unknown:
        return None
    print(f"monitord: unknown provider(s): {', '.join(unknown)}; configured: {', '.join(s.name for s in specs)}",
          file=sys.stderr)
    return 2


def cmd_health(args: argparse.Namespace) -> int:
    target = daemon_target(args)
    logs.configure("error", "console")
    if (code := _unknown_providers(args.provider or (), target.config)) is not None:
        return code
    from monitord.client import ClientError, DaemonUnavailable

    async def ask() -> ProvidersAnswer:
        async with target.client(max_stale_s=0) as client:
            return await client.providers()

    try:
        answer = _run_coro(ask())
        providers = [p for p in answer.providers if not args.provider or p["name"] in args.provider]
    except DaemonUnavailable as exc:
        if target.config is None:
            print(f"monitord: no daemon answers at {target.url} ({safe_text(exc)})", file=sys.stderr)
            return 1
        print(f"monitord: no daemon answers at {target.url} ({safe_text(exc)}); probing directly instead",
              file=sys.stderr)
        return cmd_check(args)
    except ClientError as exc:
        print(f"monitord: the daemon at {target.url} refused: {safe_text(exc)}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps({"source": "daemon", "providers": providers}, option=orjson.OPT_INDENT_2).decode())
    else:
        print_health_table(providers, answer.generated_at)
    watched = [p for p in providers if p["status"] != Status.DISABLED.value]  # disabled on purpose: not a failure
    return 0 if watched and all(p["status"] == Status.UP.value for p in watched) else 1


def _run_coro(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _ms_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def for_text(since: str | None, now: datetime) -> str:
    """'3h12m' from an ISO time to now."""
    if not since:
        return "-"
    seconds = max(0, int((now - datetime.fromisoformat(since)).total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def measured(generation: Mapping[str, Mapping[str, Any]] | None,
             model: str | None = None) -> Mapping[str, Any] | None:
    """The canary statistics to show for a provider: `model`'s, else the model with the most successful
    samples; None when no model has a successful sample."""
    timed = [stats for stats in (generation or {}).values() if stats.get("samples_ok")]
    if model is not None:
        timed = [stats for stats in timed if stats["model"] == model] or timed
    return max(timed, key=lambda stats: (stats["samples_ok"], stats["model"])) if timed else None


def _tps_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def generation_cells(stats: Mapping[str, Any] | None) -> list[str]:
    """TTFT p50 and tokens/s p50 of one model's canary statistics."""
    if stats is None:
        return ["-", "-"]
    return [_ms_text(stats.get("ttft_p50_ms") or stats.get("total_p50_ms")), _tps_text(stats.get("tokens_per_s_p50"))]


def current_error(p: Mapping[str, Any], now: datetime) -> str:
    """The last error while it is current (no success since), with its age; '' once the provider recovered."""
    if not p.get("last_error_class"):
        return ""
    error_at, success_at = p.get("last_error_at"), p.get("last_success_at")
    if error_at and success_at and datetime.fromisoformat(success_at) > datetime.fromisoformat(error_at):
        return ""
    text = f"{p['last_error_class']}: {p.get('last_error') or ''}".rstrip(": ")
    return f"{text} ({for_text(error_at, now)} ago)" if error_at else text


def health_table(providers: Sequence[Mapping[str, Any]], now: datetime) -> Table:
    """Providers as the API describes them; `now` is the daemon's time of the answer. TTFT and TOK/S columns (the
    generation canary's p50, of the model with the most successful samples) appear when any provider has them."""
    speeds = {p["name"]: measured(p.get("generation")) for p in providers}
    canary = any(speeds.values())
    table = Table(show_edge=False, header_style="bold")
    numeric = ("FOR", "AVAIL", "P50", "P95", "TTFT", "TOK/S")
    for column in ("PROVIDER", "TYPE", "STATUS", "FOR", "AVAIL", "P50", "P95", *(("TTFT", "TOK/S") if canary else ()),
                   "MODELS", "LAST ERROR"):
        table.add_column(column, justify="right" if column in numeric else "left",
                         overflow="fold" if column in ("MODELS", "LAST ERROR") else "ellipsis")
    for p in providers:
        ids = [m["id"] for m in p["models"]]
        models = ", ".join(ids[:3]) + (f" (+{len(ids) - 3})" if len(ids) > 3 else "")
        error = current_error(p, now)
        speed = generation_cells(speeds[p["name"]]) if canary else []
        table.add_row(plain(p["name"]), plain(p["type"]), status_load_cell(p["status"], p.get("saturated")),
                      for_text(p["since"], now),
                      _ratio_text(p["availability"]), _ms_text(p["latency_p50_ms"]), _ms_text(p["latency_p95_ms"]),
                      *speed, plain(models or "-"), plain(error))
    return table


def print_health_table(providers: Sequence[Mapping[str, Any]], now: datetime) -> None:
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(health_table(providers, now))
    up = sum(p["status"] == Status.UP.value for p in providers)
    console.print(f"{up}/{len(providers)} up")


def cmd_rank(args: argparse.Namespace) -> int:
    target = daemon_target(args)
    logs.configure("error", "console")
    from monitord.client import ApiError, DaemonUnavailable

    fields = {"task_type": args.task_type, "required_capabilities": args.capability, "max_tokens": args.max_tokens,
              "quality_preference": args.quality, "model": args.model}

    async def ask() -> tuple[RankingAnswer, ProvidersAnswer]:
        async with target.client(max_stale_s=0) as client:
            ranking = await client.ranking({key: value for key, value in fields.items() if value is not None})
            return ranking, await client.providers()

    try:
        answer, providers = _run_coro(ask())
    except ValueError as exc:  # the criteria, checked before asking
        print(f"monitord: {exc}", file=sys.stderr)
        return 2
    except DaemonUnavailable as exc:
        print(f"monitord: no daemon answers at {target.url} ({safe_text(exc)}); start it with `monitord run`",
              file=sys.stderr)
        return 1
    except ApiError as exc:
        print(f"monitord: the daemon at {target.url} refused: {safe_text(exc)}", file=sys.stderr)
        return 2 if exc.status == 400 else 1
    if args.json:
        print(orjson.dumps({
            "generated_at": answer.generated_at.isoformat(), "criteria": answer.criteria.to_dict(),
            "ranking": [entry.to_dict() for entry in answer.entries],
            "excluded": {name: list(reasons) for name, reasons in answer.excluded.items()},
        }, option=orjson.OPT_INDENT_2).decode())
    else:
        generation = {p["name"]: p.get("generation") for p in providers.providers}
        print_rank_table(answer, generation)
    return 0 if answer.entries else 1


RANK_PARTS = ("availability", "speed", "headroom", "recency", "priority", "quality", "task_fit")


def rank_table(answer: RankingAnswer, generation: Mapping[str, Mapping[str, Any] | None] | None = None) -> Table:
    """The ranking with its parts; TTFT and TOK/S (the canary model the speed part rests on) where measured."""
    speeds: dict[str, Mapping[str, Any] | None] = {}
    for entry in answer.entries:
        evidence = entry.evidence.get("speed")
        canary = evidence is not None and evidence.source == "canary"
        speeds[entry.provider] = measured((generation or {}).get(entry.provider),
                                          evidence.model if evidence is not None else None) if canary else None
    shown = any(speeds.values())
    table = Table(show_edge=False, header_style="bold")
    table.add_column("#", justify="right")
    for column in ("PROVIDER", "TYPE", "STATUS", "SCORE", *(p.upper().replace("_", " ") for p in RANK_PARTS),
                   *(("TTFT", "TOK/S") if shown else ()), "WEIGHT", "MODELS"):
        table.add_column(column, justify="left" if column in ("PROVIDER", "TYPE", "STATUS", "MODELS") else "right",
                         overflow="fold" if column == "MODELS" else "ellipsis")
    for place, entry in enumerate(answer.entries, start=1):
        parts = [f"{entry.components.get(part, 0.0):.2f}" for part in RANK_PARTS]
        weight = (entry.components.get("weight", 1.0) * entry.components.get("status_factor", 1.0)
                  * entry.components.get("warm", 1.0))
        models = ", ".join(entry.models[:3]) + (f" (+{len(entry.models) - 3})" if len(entry.models) > 3 else "")
        speed = generation_cells(speeds[entry.provider]) if shown else []
        table.add_row(str(place), plain(entry.provider), plain(entry.type),
                      status_load_cell(entry.status, entry.saturated),
                      f"{entry.score:.3f}", *parts, *speed, f"{weight:.2f}", plain(models or "-"))
    return table


def print_rank_table(answer: RankingAnswer, generation: Mapping[str, Mapping[str, Any] | None] | None = None) -> None:
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(rank_table(answer, generation))
    console.print("score = weight x status factor x warm x weighted sum of the parts (weights by --quality); "
                  "WEIGHT is the product of the first three", style="dim")
    if answer.excluded:
        console.print(f"excluded ({len(answer.excluded)}):")
        for name in sorted(answer.excluded):
            console.print(plain(f"  {name}: {'; '.join(answer.excluded[name])}"))


def cmd_monitor(args: argparse.Namespace) -> int:
    target = daemon_target(args)
    logs.configure("error", "console")
    if (code := _unknown_providers([args.provider] if args.provider else [], target.config)) is not None:
        return code
    from monitord.cli_monitor import monitor

    return _run_async(monitor(target.client(max_stale_s=0), args.provider, as_json=args.json, once=args.once))


def cmd_completion(args: argparse.Namespace) -> int:
    from monitord.completion import script

    print(script(build_parser(), args.shell), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if not 0.1 <= args.speed <= 100:
        print("monitord: --speed must be between 0.1 and 100", file=sys.stderr)
        return 2
    logs.configure("error", "console")  # the demo prints the story, status changes and alerts itself
    from monitord.demo.run import run_demo

    return _run_async(run_demo(speed=args.speed, port=args.port, exit_after_story=args.exit_after_story))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def cmd_alert(args: argparse.Namespace) -> int:
    config, _ = _load(args)
    logs.configure("error", "console")
    names = [hook.name for hook in config.alerts.webhooks]
    if not names:
        print("monitord: no webhooks configured (alerts.webhooks)", file=sys.stderr)
        return 2
    if args.sink and args.sink not in names:
        print(f"monitord: unknown webhook {args.sink!r}; configured: {', '.join(names)}", file=sys.stderr)
        return 2
    from monitord.daemon import send_test_alert

    try:
        rows = asyncio.run(send_test_alert(config, args.sink, timeout_s=args.timeout))
    except Exception as exc:  # the database or the migrations: one line, never a traceback
        print(f"monitord: alert test failed: {type(exc).__name__}: {_first_line(exc)}", file=sys.stderr)
        return 1
    table = Table(show_edge=False, header_style="bold")
    for column in ("WEBHOOK", "STATE", "ATTEMPTS", "HTTP", "ERROR"):
        table.add_column(column)
    for row in rows:
        table.add_row(plain(row.webhook), row.state.value, str(row.attempts), str(row.last_status or "-"),
                      plain(row.last_error or ""))
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    return 0 if rows and all(row.state.value == "delivered" for row in rows) else 1


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "check": cmd_check,
    "migrate": cmd_migrate,
    "config": cmd_config,
    "alert": cmd_alert,
    "health": cmd_health,
    "rank": cmd_rank,
    "monitor": cmd_monitor,
    "demo": cmd_demo,
    "completion": cmd_completion,
}
