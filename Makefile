# CryptoStream developer commands. Every target installs what it needs first.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: install run test test-fast bench lint clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=python3.x (3.11+)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,torch]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package with its extras and dev tools

BINANCE_URL ?=
run: $(STAMP)  ## the live Binance pipeline (BINANCE_URL=ws://127.0.0.1:PORT for a local fake-binance)
	$(BIN)/cryptostream run $(if $(BINANCE_URL),--binance-url $(BINANCE_URL)) $(ARGS)

test: $(STAMP)  ## run every test
	$(BIN)/python -m pytest $(ARGS)

test-fast: $(STAMP)  ## unit and contract tests only
	$(BIN)/python -m pytest tests/unit tests/contract src $(ARGS)

bench: $(STAMP)  ## benchmarks (minutes); results go to docs/benchmarks.md by hand
	$(BIN)/python benchmarks/bench_pipeline.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
