# newsflow: `make run` runs the whole system locally, `make test` runs the whole suite.
# Both set up .venv first; nothing else needs to be installed on the machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CODE   := services shared ops tests $(wildcard bench)

.PHONY: install run test lint typecheck browser unit integration e2e faults soak bench bench-cache wrk eval clean up down logs docs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[embedded,dev,otel]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/newsflow run

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

typecheck: $(STAMP)
	$(BIN)/mypy

# The status-page test drives a real headless Chromium (Debian's). Installed here when running
# as root and missing; otherwise that test skips and says how to get it.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
	      || echo "could not install chromium; the browser test will skip"; \
	  else echo "chromium not installed; the browser test will skip"; fi; \
	fi

test: lint typecheck browser
	$(BIN)/python -m pytest

unit: $(STAMP)
	$(BIN)/python -m pytest -m unit

integration: $(STAMP)
	$(BIN)/python -m pytest -m integration

e2e: $(STAMP)
	$(BIN)/python -m pytest -m e2e

faults: $(STAMP)
	$(BIN)/python -m pytest -m faults

# The fault suite with ten times the stories (kill -9 during 20,000 versions, and so on).
soak: $(STAMP)
	NEWSFLOW_FAULTS_SCALE=10 $(BIN)/python -m pytest -m faults

# End-to-end benchmark: the three services vs a raw three-hop baseline; see docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python -m bench.e2e $(BENCH_ARGS)

# wrk (C) as the load generator of bench/cache.py: installed here when root and missing.
wrk:
	@if ! command -v wrk >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq wrk >/dev/null) \
	      || echo "could not install wrk; bench/cache.py falls back to aiohttp"; \
	  else echo "wrk not installed; bench/cache.py falls back to aiohttp"; fi; \
	fi

bench-cache: $(STAMP) wrk
	$(BIN)/python -m bench.cache $(BENCH_ARGS)

docs: $(STAMP)
	$(BIN)/newsflow docs write

# With Docker: Apache Kafka + Redis + the three services (add `--profile demo` for the partner).
up:
	test -f .env || cp .env.example .env
	docker compose up --build --detach --wait

down:
	docker compose down

logs:
	docker compose logs --follow --tail=100

# Enrichment quality on the labelled corpus (tests/data/corpus): sections, related, duplicates.
eval: $(STAMP)
	$(BIN)/python -m services.enrichment.evaluation tests/data/corpus/stories.jsonl

clean:
	rm -rf $(VENV) .newsflow .pytest_cache .mypy_cache .ruff_cache
