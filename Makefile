# Esper: every target sets itself up (scripts/bootstrap.sh is idempotent and cheap when done).
.DEFAULT_GOAL := help
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
PYTEST_ARGS ?=
# `make experiment`: the README's headline tables (scripts/experiment.sh; HOSTS=mlp for the
# MLP's alone, about 12 minutes; PIECE=A-B for seeds A..B of a table, MERGE=1 to put the
# pieces together); EXPERIMENT_ARGS="..." runs benchmarks/morphogenesis.py with those
# arguments instead.
EXPERIMENT_ARGS ?=
HOSTS ?= mlp cnn char
PIECE ?=
MERGE ?=

.PHONY: help install gen check-gen test test-unit demo up down status bench experiment lint

help:
	@echo "make demo       install everything, start the local stack, run the demo"
	@echo "make test       install everything, run the whole test suite"
	@echo "make up/down    start/stop the local stack (state in .esper/)"
	@echo "make status     health of the local stack"
	@echo "make gen        regenerate gen/ from proto/"
	@echo "make bench      run every benchmark (JSON in benchmarks/results/)"
	@echo "make experiment does growth pay? the README's tables: MLP, CNN, char hosts"
	@echo "                (benchmarks/results/morphogenesis*.{json,md,png}; HOSTS=mlp, PIECE=0-1,"
	@echo "                MERGE=1, EXPERIMENT_ARGS=...)"
	@echo "make lint       buf lint + ruff + import contracts (lint-imports)"

install:
	@bash scripts/bootstrap.sh

gen: install
	bash scripts/gen.sh

check-gen: install
	bash scripts/check_gen.sh

test: install
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-unit: install
	$(BIN)/pytest -q tests/unit tests/contract $(PYTEST_ARGS)

up: install
	$(BIN)/esper up

down: install
	$(BIN)/esper down

status: install
	$(BIN)/esper status

demo: install
	bash scripts/demo.sh

bench: install
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

experiment: install
ifeq ($(strip $(EXPERIMENT_ARGS)),)
	HOSTS="$(HOSTS)" PIECE="$(PIECE)" MERGE="$(MERGE)" bash scripts/experiment.sh
else
	$(BIN)/python benchmarks/morphogenesis.py $(EXPERIMENT_ARGS)
endif

lint: install
	cd proto && ../$(BIN)/buf lint
	$(BIN)/ruff check services clients tests benchmarks examples scripts
	$(BIN)/lint-imports
