# One venv, made from nothing; every target installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= monitord.yaml

.PHONY: runtime install run demo test lint typecheck docs bench clean

runtime: $(VENV)/.runtime  ## the daemon's own dependencies only (what `make run` and `make demo` need)

$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e .
	touch $@

install: $(VENV)/.installed  ## everything for development: the dev, speed and bench extras too (`make test`)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,speed,bench]'
	touch $@ $(VENV)/.runtime

run: runtime  ## run the daemon on the sample config (SQLite file monitord.db here)
	$(BIN)/monitord run -c $(CONFIG)

demo: runtime  ## simulated servers through a two-minute story, the status page and the alerts (no config needed)
	$(BIN)/monitord demo

# Two workers: most of the suite waits (subprocesses, timers, servers), so two halve it on 2 cores. A worker takes
# whole files (module-scoped fixtures such as the installed wheel are built once), in collection order, where
# tests/conftest.py puts the slow files first; `TEST_WORKERS=0` runs it serially.
TEST_WORKERS ?= 2

test: install lint typecheck  ## lint, type-check and run the whole test suite
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: install
	$(BIN)/ruff check monitord tests bench docs
	$(BIN)/cog --check -I . README.md

docs: install  ## regenerate the README's generated blocks (CLI help, config keys, provider types)
	$(BIN)/cog -r -I . README.md

typecheck: install
	$(BIN)/mypy

bench: install  ## benchmarks (not part of the tests); figures go to BENCHMARKS.md
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
