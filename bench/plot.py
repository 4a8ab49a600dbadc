"""PNG plots of recorded figures, linked from BENCHMARKS.md (matplotlib, imported only when drawing)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import Table

BENCH_DIR = Path(__file__).resolve().parent
PROBE_COST_PNG = BENCH_DIR / "probe_cost.png"
SELECTION_PREFIX = "selection_ttft_"


def draw(tables: Sequence[Table]) -> list[Path]:
    """Draw every plot the tables have figures for; returns the images written."""
    images: list[Path] = []
    for table in tables:
        points = table.figures.get("probe_cost")
        if points:
            images.append(probe_cost(points, PROBE_COST_PNG))
        for key, samples in table.figures.items():
            if key.startswith(SELECTION_PREFIX) and samples:
                scenario = key.removeprefix(SELECTION_PREFIX)
                images.append(selection_ttft(samples, scenario, BENCH_DIR / f"selection_{scenario}.png"))
    return images


def selection_ttft(samples: dict[str, list[float]], scenario: str, path: Path) -> Path:
    """TTFT distribution per selection policy (box plot, log scale: the tail is the point)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, values in samples.items() if values]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    try:
        ax.boxplot([samples[name] for name in names], vert=False, whis=(5, 95), showfliers=True,
                   flierprops={"markersize": 2, "alpha": 0.4})
        ax.set_yticks(range(1, len(names) + 1), names, fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("time to first token, ms (whiskers: p5..p95)")
        ax.set_title(f"TTFT per policy, {scenario} fleet")
        ax.grid(True, axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def probe_cost(points: Sequence[dict[str, Any]], path: Path) -> Path:
    """CPU-µs per probe against the number of providers, monitord beside the bare aiohttp loop."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    ns = [p["n"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    try:
        for key, label, marker in (("monitord_cpu_us", "monitord daemon (probe, state, store, API, alerts)", "o"),
                                   ("probe_only_cpu_us", "monitord scheduler + probe only", "^"),
                                   ("baseline_cpu_us", "bare aiohttp loop, same GETs", "s")):
            if all(p.get(key) is not None for p in points):
                ax.plot(ns, [float(p[key]) for p in points], marker=marker, label=label)
        ax.plot(ns, [1.5 * p["baseline_cpu_us"] for p in points], linestyle=":", color="grey",
                label="target: 1.5x the bare loop")
        ax.set_xscale("log")
        ax.set_xticks(ns, [f"{n:,}" for n in ns])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("providers (probe rate held constant)")
        ax.set_ylabel("CPU µs per probe")
        rate = points[0].get("rate_per_s")
        ax.set_title("Probe engine cost" + (f" at {rate:g} probes/s" if rate else ""))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
