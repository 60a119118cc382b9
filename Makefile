# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.omnifuse-installed

.PHONY: install assets demo test lint bench clean

$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh
	touch $(STAMP)

install: $(STAMP)

# Converts the packaged weights once into the asset cache (OMNIFUSE_CACHE); later calls are instant.
assets: install
	$(BIN)/omnifuse assets prepare

demo: assets
	$(BIN)/omnifuse quickstart

test: assets
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports --no-cache  # the layer contract in pyproject.toml ([tool.importlinter])

bench: assets
	$(BIN)/python benchmarks/bench_llava.py

clean:
	rm -rf $(VENV) runs
