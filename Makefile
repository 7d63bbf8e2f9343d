# Two entry points: `make serve` (install and run on the embedded defaults) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test deps lint bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

serve: $(BIN)/.installed
	$(BIN)/responder serve

deps:
	scripts/test-deps

# Two processes (the suite waits on SMTP, databases and browsers more than it computes), each
# given the next test when it is free, the long ones first (tests/conftest.py); a test that
# hangs fails after 10 minutes with every thread's stack instead of stalling CI.
test: $(BIN)/.installed deps
	$(BIN)/pytest -n 2 --maxschedchunk 1 --timeout 600

lint: $(BIN)/.installed
	$(BIN)/ruff check responder tests bench
	$(BIN)/ruff format --check responder tests bench
	$(BIN)/mypy responder

# Every benchmark, ~10-15 minutes on two cores (BENCH_ARGS=--full for the big sizes): rewrites
# the generated section at the top of docs/benchmarks.md and the charts in docs/bench/.
bench: $(BIN)/.installed
	$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/suite.py $(BENCH_ARGS)
