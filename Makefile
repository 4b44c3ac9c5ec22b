# newsflow: `make run` runs the whole system locally, `make test` runs the whole suite.
# Both set up .venv first; nothing else needs to be installed on the machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CODE   := services shared ops tests $(wildcard bench)

.PHONY: install run test lint typecheck unit integration e2e bench eval clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[embedded,dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/newsflow run

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest

unit: $(STAMP)
	$(BIN)/python -m pytest -m unit

integration: $(STAMP)
	$(BIN)/python -m pytest -m integration

e2e: $(STAMP)
	$(BIN)/python -m pytest -m e2e

# Enrichment quality on the labelled corpus (tests/data/corpus): sections, related, duplicates.
eval: $(STAMP)
	$(BIN)/python -m services.enrichment.evaluation tests/data/corpus/stories.jsonl

clean:
	rm -rf $(VENV) .newsflow .pytest_cache .mypy_cache .ruff_cache
