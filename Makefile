# CryptoStream developer commands. Every target installs what it needs first.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: install run test test-fast bench lint clean browser

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; set PYTHON=python3.x (3.11+)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,torch]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package with its extras and dev tools

BINANCE_URL ?=
DB ?=
DASHBOARD_PORT ?= 8501
# The dashboard starts once the pipeline serves queries (so it never holds the file while the
# pipeline opens it), and is stopped when the pipeline exits.
run: $(STAMP)  ## the live Binance pipeline + dashboard (BINANCE_URL=ws://127.0.0.1:PORT for a local fake-binance; DB=path)
	@db='$(DB)'; [ -n "$$db" ] || db=$$($(BIN)/python -c 'from cryptostream.config import load_settings; print(load_settings().db)' 2>/dev/null) || db=data/cryptostream.duckdb; \
	( i=0; while [ ! -e "$$db.query.json" ] && [ $$i -lt 600 ]; do sleep 0.1; i=$$((i+1)); done; \
	  exec $(BIN)/cryptostream dashboard --db "$$db" --port $(DASHBOARD_PORT) --metrics-port 9109 ) & dash=$$!; \
	trap 'kill $$dash 2>/dev/null; wait $$dash 2>/dev/null' EXIT INT TERM; \
	echo "dashboard: http://127.0.0.1:$(DASHBOARD_PORT) (once the pipeline runs)"; \
	$(BIN)/cryptostream run --db "$$db" $(if $(BINANCE_URL),--binance-url $(BINANCE_URL)) $(ARGS)

test: $(STAMP) browser  ## run every test
	$(BIN)/python -m pytest $(ARGS)

# Debian's Chromium + chromedriver for the dashboard's browser test (CRYPTOSTREAM_NO_BROWSER=1
# skips both the install and the test)
browser:
	@if [ "$$CRYPTOSTREAM_NO_BROWSER" = 1 ] || { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then exit 0; fi; \
	echo "installing chromium and chromium-driver (Debian packages) for the browser test"; \
	if [ "$$(id -u)" = 0 ]; then apt="env DEBIAN_FRONTEND=noninteractive apt-get"; \
	else apt="sudo env DEBIAN_FRONTEND=noninteractive apt-get"; fi; \
	$$apt install -y --no-install-recommends chromium chromium-driver >/dev/null \
	  || { $$apt update -qq && $$apt install -y --no-install-recommends chromium chromium-driver >/dev/null; } \
	  || { echo "error: could not install chromium and chromium-driver with apt-get; install them by hand, or run CRYPTOSTREAM_NO_BROWSER=1 make test to skip the browser test"; exit 1; }

test-fast: $(STAMP)  ## unit and contract tests only
	$(BIN)/python -m pytest tests/unit tests/contract src $(ARGS)

bench: $(STAMP)  ## benchmarks (minutes); results go to docs/benchmarks.md by hand
	$(BIN)/python benchmarks/bench_pipeline.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
