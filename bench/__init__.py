"""Benchmarks of monitord, each measured beside a baseline in the same run (`python -m bench`, `make bench`).

Not part of the test suite. A benchmark is any module `bench/<name>.py` that defines

    async def run(quick: bool) -> list[bench.common.Table]

`python -m bench` imports every such module (helpers without `run`, such as `common` and `plot`, are skipped),
runs each on a fresh event loop (uvloop when installed, as the daemon does), prints its tables and, in full
mode, appends them to BENCHMARKS.md under a dated heading with the machine's core count and versions.
`quick=True` must finish in a few seconds: the smoke test (tests/test_bench_smoke.py) calls it to keep the
benchmark from rotting, and its figures are never recorded. A benchmark that cannot run here (no PostgreSQL,
say) prints why and leaves that row out; it never fails the whole run. Optionally a module sets `ORDER: int`
(lower runs first; default 100) and `TITLE: str` (a one-line description for `python -m bench --list`).
"""
