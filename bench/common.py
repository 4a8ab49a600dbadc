"""What every benchmark shares: the Table it returns, CPU/RSS/percentile helpers, and the BENCHMARKS.md record.

Figures are only comparable within one run on one machine, so every recorded section carries the date, the core
count and the versions of the parts that move the numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import resource
import sqlite3
import statistics
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
POSTGRES_DSN = os.environ.get("MONITORD_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
POSTGRES_TIMEOUT_S = 3.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Target:
    """One goal of an issue and what this run measured against it.

    met is None when the run could not measure it honestly (a shared core, a noisy machine, a part missing):
    `note` says why, and the summary shows "not measured" rather than rounding it into a pass or a miss.
    """

    figure: str  # what is measured, with its conditions: "GET /v1/ranking req/s vs a trivial handler, 1,000 ..."
    goal: str  # the bound as the issue states it: ">= 0.9x"
    measured: str  # the figure, "min / median / max" where runs repeat (spread_text)
    met: bool | None
    note: str = ""  # how it was taken, or why it is not trustworthy (busy_note)

    @property
    def result(self) -> str:
        return "not measured" if self.met is None else "met" if self.met else "NOT met"


@dataclass
class Table:
    """One benchmark's result: formatted rows for people, `figures` (JSON-able) for plots and the smoke test,
    and the issue `targets` it measured (collected into each run's summary and BENCHMARKS.md's latest-targets
    block)."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(tuple(fmt(cell) for cell in cells))

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join(" --- " for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def text(self) -> str:
        widths = [max(len(header), *(len(row[i]) for row in self.rows)) if self.rows else len(header)
                  for i, header in enumerate(self.columns)]
        rule = "  ".join("-" * width for width in widths)
        lines = [self.title, "=" * len(self.title),
                 "  ".join(header.ljust(width) for header, width in zip(self.columns, widths, strict=True)), rule]
        lines += ["  ".join(cell.rjust(width) if _numeric(cell) else cell.ljust(width)
                            for cell, width in zip(row, widths, strict=True)) for row in self.rows]
        lines += [f"* {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def _numeric(cell: str) -> bool:
    return bool(cell) and (cell[0].isdigit() or cell[0] in "-+.") and cell != "-"


def fmt(value: object) -> str:
    """Numbers for a table: thousands separators, 3 significant digits below 100, '-' for None."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def verdict(value: float | None, *, at_most: float | None = None, at_least: float | None = None) -> str:
    """'met' or 'NOT met' against a target bound; 'n/a' when nothing was measured."""
    if value is None:
        return "n/a"
    ok = (at_most is None or value <= at_most) and (at_least is None or value >= at_least)
    return "met" if ok else "NOT met"


def spread_text(values: Sequence[float], unit: str = "", format_value: Callable[[object], str] = fmt) -> str:
    """'min / median / max' of repeated runs (with `unit` after each), or the one value; '-' for none."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{format_value(values[0])}{unit}"
    low, middle, high = min(values), statistics.median(values), max(values)
    figures = " / ".join(f"{format_value(v)}{unit}" for v in (low, middle, high))
    return f"{figures} (min / median / max of {len(values)})"


def busy_note(threshold_per_core: float = 1.0) -> str:
    """A note for a Target when other work loads the machine now (1-minute load average over threshold x cores),
    else ''. A benchmark's own server, load generator and baseline keep the cores partly busy (load about one on
    two cores), so the threshold sits above that. Ratios against a baseline in the same run survive some load;
    absolute figures do not."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()[0]
    if load <= threshold_per_core * cores:
        return ""
    return f"machine busy: load average {load:.1f} on {cores} cores while measuring"


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks; q in [0, 1]; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True, slots=True)
class Usage:
    """Wall and process CPU time (all threads) between two points, in seconds."""

    wall_s: float
    cpu_s: float

    def cpu_us_per(self, count: int) -> float | None:
        return self.cpu_s * 1e6 / count if count else None

    def rate(self, count: int) -> float | None:
        return count / self.wall_s if self.wall_s > 0 else None


class Meter:
    """Marks a start, then reports the Usage since; `with Meter() as m: ...; m.usage` after the block."""

    def __init__(self) -> None:
        self._wall0 = time.perf_counter()
        self._cpu0 = time.process_time()
        self._final: Usage | None = None

    def reset(self) -> None:
        self._wall0 = time.perf_counter()
        self._cpu0 = time.process_time()
        self._final = None

    @property
    def usage(self) -> Usage:
        if self._final is not None:
            return self._final
        return Usage(time.perf_counter() - self._wall0, time.process_time() - self._cpu0)

    def __enter__(self) -> Meter:
        self.reset()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._final = self.usage


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def raise_fd_limit() -> int:
    """Lift the soft open-files limit to the hard one (thousands of sockets); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (what `monitord run` uses), else the default loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def loop_name() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"uvloop {version('uvloop')}"
    except PackageNotFoundError:
        return "asyncio"


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a fresh loop of the kind the daemon uses."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)


async def postgres_version(dsn: str = POSTGRES_DSN) -> str | None:
    """The server version, or None when no PostgreSQL answers (benchmarks then skip it)."""
    import asyncpg

    try:
        conn = await asyncpg.connect(dsn, timeout=POSTGRES_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return None
    try:
        version: str = await conn.fetchval("SHOW server_version")
        return version
    finally:
        await conn.close()


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


@dataclass(frozen=True, slots=True)
class Machine:
    cores: int
    cpu: str | None
    python: str
    sqlite: str
    postgres: str | None
    loop: str
    load_1m: float  # other work on the machine when the run started

    def line(self) -> str:
        cpu = f" ({self.cpu})" if self.cpu else ""
        return (f"{self.cores} cores{cpu}; Python {self.python} on {self.loop}; SQLite {self.sqlite}; "
                f"PostgreSQL {self.postgres or 'not reachable'}; load average {self.load_1m:.1f} at start")


async def machine() -> Machine:
    return Machine(
        cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        cpu=_cpu_model(),
        python=platform.python_version(),
        sqlite=sqlite3.sqlite_version,
        postgres=await postgres_version(),
        loop=loop_name(),
        load_1m=os.getloadavg()[0],
    )


BENCHMARKS_HEADER = """\
# Benchmarks

Measured with `make bench` (`python -m bench`; one benchmark: `python -m bench probes`). Each run appends a
section below, dated and with the machine it ran on. Every figure sits beside a baseline measured in the same
run, so compare ratios across runs rather than absolute numbers: on a shared 2-core machine the absolute figures
move by 2x with load. How each figure is taken is described in the benchmark's module docstring (`bench/`).
"""


TARGETS_BEGIN = "<!-- targets:begin (written by `python -m bench`; the latest measurement of every target) -->"
TARGETS_END = "<!-- targets:end -->"
_TARGET_COLUMNS = ("figure", "goal", "measured", "result", "note", "run")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")


def targets_table(targets: Sequence[Target], title: str = "Targets of this run") -> Table:
    table = Table(title, _TARGET_COLUMNS[:-1])
    for target in targets:
        table.add(target.figure, target.goal, target.measured, target.result, target.note or "-")
    return table


def _summary_rows(text: str) -> dict[str, tuple[str, ...]]:
    """The rows of the latest-targets block, by figure (cells as written, pipes still escaped)."""
    begin, end = text.find(TARGETS_BEGIN), text.find(TARGETS_END)
    if begin < 0 or end < begin:
        return {}
    rows: dict[str, tuple[str, ...]] = {}
    for line in text[begin:end].splitlines():
        if not line.startswith("| ") or line.startswith("| figure |"):
            continue
        cells = tuple(cell.strip() for cell in _CELL_SPLIT.split(line.strip().strip("|")))
        if len(cells) == len(_TARGET_COLUMNS):
            rows[cells[0]] = cells
    return rows


def _summary_block(rows: dict[str, tuple[str, ...]]) -> str:
    lines = [TARGETS_BEGIN, "## Summary: every target, latest measurement", "",
             "| " + " | ".join(_TARGET_COLUMNS) + " |", "|" + "|".join(" --- " for _ in _TARGET_COLUMNS) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows.values()]
    lines.append(TARGETS_END)
    return "\n".join(lines)


def _with_summary(text: str, targets: Sequence[Target], stamp: str) -> str:
    """`text` with the latest-targets block updated: this run's targets replace the rows of the same figure."""
    rows = _summary_rows(text)
    for target in targets:
        cells = (target.figure, target.goal, target.measured, target.result, target.note or "-", stamp)
        rows[target.figure.replace("|", "\\|")] = tuple(cell.replace("|", "\\|") for cell in cells)
    block = _summary_block(rows)
    begin, end = text.find(TARGETS_BEGIN), text.find(TARGETS_END)
    if begin >= 0 and end > begin:
        return text[:begin] + block + text[end + len(TARGETS_END):]
    first_section = text.find("\n## ")
    if first_section < 0:
        return text.rstrip("\n") + "\n\n" + block + "\n"
    return text[:first_section + 1] + block + "\n\n" + text[first_section + 1:]


def record(tables: Sequence[Table], machine_info: Machine, *, images: Sequence[Path] = (),
           missing: Sequence[str] = (), path: Path = BENCHMARKS_MD, when: datetime | None = None) -> None:
    """Append a dated section with `tables` (and links to `images`) to BENCHMARKS.md; `missing` names the
    benchmarks that failed in this run, with why, so a gap is never silent. The section opens with every target
    the tables measured, and the block at the top of the file keeps the latest measurement of each target."""
    stamp = (when or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    load_end = os.getloadavg()[0]
    parts = [f"## {stamp}: {machine_info.line()}; load average {load_end:.1f} at the end", ""]
    if missing:
        parts += [f"Not measured in this run: {'; '.join(missing)}.", ""]
    targets = [target for table in tables for target in table.targets]
    if targets:
        parts.append(targets_table(targets).markdown())
    for image in images:
        relative = image.resolve().relative_to(path.resolve().parent)
        parts += [f"![{image.stem.replace('_', ' ')}]({relative.as_posix()})", ""]
    parts += [table.markdown() for table in tables]
    existing = path.read_text(encoding="utf-8") if path.exists() else BENCHMARKS_HEADER
    if targets:
        existing = _with_summary(existing, targets, stamp)
    path.write_text(existing.rstrip("\n") + "\n\n" + "\n".join(parts).rstrip("\n") + "\n", encoding="utf-8")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
