"""The benchmarks are not tests, but their quick modes run here so bench/ cannot rot unnoticed between runs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench import probes
from bench.__main__ import discover
from bench.common import Machine, Table, Target, record, spread_text

MACHINE = Machine(cores=2, cpu=None, python="3.11.7", sqlite="3.40.1", postgres=None, loop="asyncio", load_1m=0.5)


def test_every_benchmark_module_is_discovered() -> None:
    found = discover()
    assert {"probes", "ingest"} <= found.keys()
    assert list(found)[:2] == ["probes", "ingest"]  # ORDER puts the engine first


@pytest.mark.slow
def test_probe_engine_quick_run_measures_both_variants() -> None:
    sample = probes.measure_size(20, quick=True, breakdown=True, progress=lambda _line: None)
    assert sample.ours.paths == sample.bare.paths and "/v1/models" in sample.ours.paths
    for outcome in (sample.ours, sample.bare, sample.probe_only):
        assert outcome is not None and outcome.probes > 0 and outcome.failed == 0
        assert outcome.cpu_us_per_probe is not None and outcome.cpu_us_per_probe > 0
        assert outcome.lateness_p99_ms is not None and outcome.peak_rss_mb > 0
    assert sample.ours.rows_written > 0 and sample.ours.rows_dropped == 0 and sample.ours.rank_ms is not None
    main, targets = probes.tables([sample], quick=True)
    assert main.figures["probe_cost"][0]["n"] == 20 and len(main.rows) == 3 and targets.rows


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in discover() if name != "probes"])
async def test_quick_mode_runs(name: str) -> None:
    tables = await discover()[name].run(True)
    assert tables and all(isinstance(table, Table) and table.rows for table in tables)
    for table in tables:
        assert table.markdown().startswith(f"### {table.title}")


def test_record_appends_dated_sections(tmp_path: Path) -> None:
    target = tmp_path / "BENCHMARKS.md"
    table = Table("Demo", ("n", "rate"))
    table.add(1_000, 12.345)
    table.notes.append("a note")
    image = tmp_path / "bench" / "plot.png"
    record([table], MACHINE, images=[image], path=target, when=datetime(2026, 1, 2, 3, 4, tzinfo=UTC))
    record([table], MACHINE, missing=["api (boom)"], path=target, when=datetime(2026, 1, 3, tzinfo=UTC))
    text = target.read_text()
    assert text.startswith("# Benchmarks")
    assert "## 2026-01-02 03:04 UTC: 2 cores" in text and "## 2026-01-03 00:00 UTC" in text
    assert "| 1,000 | 12.3 |" in text and "- a note" in text and "![plot](bench/plot.png)" in text
    assert text.index("2026-01-02") < text.index("2026-01-03") < text.index("Not measured in this run: api (boom)")


def test_probe_cost_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from bench import plot

    points = [{"n": n, "rate_per_s": 100.0, "monitord_cpu_us": 2.0 * n, "baseline_cpu_us": 1.0 * n}
              for n in (100, 1_000)]
    path = plot.probe_cost(points, tmp_path / "cost.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_targets_open_the_section_and_the_summary_keeps_the_latest_of_each(tmp_path: Path) -> None:
    target = tmp_path / "BENCHMARKS.md"
    first = Table("API", ("n",), targets=[
        Target("ranking req/s vs trivial", ">= 0.9x", spread_text([0.8, 0.85, 0.95], "x"), False),
        Target("select CPU vs trivial", "<= 5x", "3.1x", True, note="machine busy | load 3"),
    ])
    first.add(1)
    record([first], MACHINE, path=target, when=datetime(2026, 1, 2, tzinfo=UTC))
    second = Table("API", ("n",), targets=[Target("ranking req/s vs trivial", ">= 0.9x", "0.93x", True)])
    second.add(2)
    record([second], MACHINE, path=target, when=datetime(2026, 1, 3, tzinfo=UTC))
    text = target.read_text()
    summary = text[text.index("<!-- targets:begin"):text.index("<!-- targets:end -->")]
    assert text.index("<!-- targets:begin") < text.index("## 2026-01-02")  # at the top, before the runs
    assert "| ranking req/s vs trivial | >= 0.9x | 0.93x | met | - | 2026-01-03 00:00 UTC |" in summary
    assert "0.85x" not in summary and summary.count("ranking req/s") == 1
    assert "| select CPU vs trivial | <= 5x | 3.1x | met | machine busy \\| load 3 | 2026-01-02 00:00 UTC |" in summary
    run = text[text.index("## 2026-01-02"):text.index("## 2026-01-03")]
    assert "### Targets of this run" in run and "0.80x / 0.85x / 0.95x (min / median / max of 3) | NOT met" in run


def test_a_target_that_could_not_be_measured_says_so() -> None:
    assert Target("x", "< 1", "-", None, note="shared core").result == "not measured"
    assert spread_text([]) == "-" and spread_text([2.0], " ms") == "2.00 ms"
