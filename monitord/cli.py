"""The `monitord` command: parses arguments and calls into the daemon. Every command returns an exit code.

Exit codes: 0 success, 1 a check found providers not up (or the daemon failed), 2 bad config or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import orjson
import structlog
from rich.console import Console
from rich.table import Table

from monitord import __version__, logs
from monitord.config import Config, ConfigError, load_config
from monitord.model import ProbeResult, Status

STATUS_STYLE = {Status.UP: "green", Status.DEGRADED: "yellow", Status.LOADING: "cyan", Status.DOWN: "red",
                Status.UNKNOWN: "dim"}

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

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("-c", "--config", type=Path, default=None,
                         help="config file (default: $MONITORD_CONFIG, ./monitord.yaml, /etc/monitord/monitord.yaml)")
        return sub

    command("run", "Run the daemon: migrate, probe on schedule, record, serve; stop on SIGTERM/SIGINT.")
    check = command("check", "Probe providers once now, without the daemon, and print a table.")
    which = check.add_mutually_exclusive_group()
    which.add_argument("--provider", "-p", action="append", metavar="NAME",
                       help="probe this provider (repeatable)")
    which.add_argument("--all", action="store_true", help="probe every enabled provider (the default)")
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")
    command("migrate", "Create or upgrade the database schema to the latest version.")
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
    endpoints = {s.name: s.redacted_endpoint for s in specs}
    if args.json:
        print(orjson.dumps([result_to_dict(r, endpoints[r.provider]) for r in results],
                           option=orjson.OPT_INDENT_2).decode())
    else:
        print_results_table(results, endpoints)
    return 0 if results and all(r.status is Status.UP for r in results) else 1


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
                       "total": _round(result.total_ms)},
        "http_status": result.http_status,
        "requests": [{"method": c.method, "path": c.path, "status": c.status, "elapsed_ms": _round(c.elapsed_ms)}
                     for c in result.calls],
        "attempts": result.attempts,
        "server_version": result.server_version,
        "models": [m.to_dict() for m in result.models],
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def print_results_table(results: Sequence[ProbeResult], endpoints: dict[str, str]) -> None:
    console = Console(width=None if sys.stdout.isatty() else 200)
    table = Table(show_edge=False, header_style="bold")
    for column in ("PROVIDER", "TYPE", "ENDPOINT", "STATUS", "LATENCY", "MODELS", "ERROR"):
        table.add_column(column, justify="right" if column == "LATENCY" else "left",
                         overflow="fold" if column in ("MODELS", "ERROR") else "ellipsis")
    for r in results:
        models = ", ".join(r.model_ids[:3]) + (f" (+{len(r.models) - 3})" if len(r.models) > 3 else "")
        error = f"{r.error_class.value}: {r.error}" if r.error_class else ""
        table.add_row(r.provider, r.provider_type, endpoints.get(r.provider, ""),
                      f"[{STATUS_STYLE[r.status]}]{r.status.value}[/]", f"{r.total_ms:.0f} ms", models or "-",
                      error)
    console.print(table)
    up = sum(r.status is Status.UP for r in results)
    console.print(f"{up}/{len(results)} up")


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "check": cmd_check,
    "migrate": cmd_migrate,
    "config": cmd_config,
}
