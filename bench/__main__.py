"""`python -m bench [NAME ...] [--quick] [--no-record]`: run the benchmarks, print tables, record the figures."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import pkgutil
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import bench
from bench import plot
from bench.common import Table, machine, record, run_async, targets_table

RunFn = Callable[[bool], Coroutine[Any, Any, list[Table]]]


@dataclass(frozen=True, slots=True)
class Benchmark:
    name: str
    title: str
    order: int
    run: RunFn


def discover() -> dict[str, Benchmark]:
    """Every module of the bench package that defines `async def run(quick)`, in their ORDER."""
    found: list[Benchmark] = []
    for info in pkgutil.iter_modules(bench.__path__):
        if info.name.startswith("_"):
            continue
        module: ModuleType = importlib.import_module(f"bench.{info.name}")
        run = getattr(module, "run", None)
        if run is None or not asyncio.iscoroutinefunction(run):
            continue
        doc = (module.__doc__ or "").strip().splitlines()
        found.append(Benchmark(info.name, getattr(module, "TITLE", doc[0] if doc else info.name),
                               int(getattr(module, "ORDER", 100)), run))
    found.sort(key=lambda b: (b.order, b.name))
    return {b.name: b for b in found}


def main(argv: list[str] | None = None) -> int:
    benchmarks = discover()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default all: "
                                                                 f"{', '.join(benchmarks)})")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds each; never recorded")
    parser.add_argument("--no-record", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for b in benchmarks.values():
            print(f"{b.name:12} {b.title}")
        return 0
    unknown = [name for name in args.names if name not in benchmarks]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(benchmarks)}")
    chosen = [benchmarks[name] for name in args.names] or list(benchmarks.values())
    host = run_async(machine())
    print(f"# {host.line()}{' (quick)' if args.quick else ''}\n", flush=True)
    tables: list[Table] = []
    failed: list[str] = []
    for b in chosen:
        print(f"## {b.name}: {b.title}", flush=True)
        started = time.perf_counter()
        try:
            produced = run_async(b.run(args.quick))
        except Exception as exc:  # one broken benchmark must not cost the figures of the others
            traceback.print_exc()
            print(f"!! {b.name} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            failed.append(f"{b.name} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
            continue
        for table in produced:
            print(table.text(), flush=True)
        print(f"({b.name} took {time.perf_counter() - started:.0f} s)\n", flush=True)
        tables += produced
    targets = [target for table in tables for target in table.targets]
    if targets:
        print(targets_table(targets).text(), flush=True)
    if tables and not args.quick and not args.no_record:
        images = plot.draw(tables)
        record(tables, host, images=images, missing=failed)
        print(f"recorded {len(tables)} table(s) in BENCHMARKS.md" + "".join(f"; plot {p}" for p in images))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
