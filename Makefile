# queuewatch: the two commands a new user needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LIBS   := infra/kafka/target/libs
STAMP  := $(VENV)/.installed
# Readable in a CI log: no cache folder, the slowest tests listed at the end.
PYTEST_FLAGS ?= -p no:cacheprovider --durations=20
# Extra arguments for `queuewatch up`, e.g. make run UP_ARGS=--no-simulate
UP_ARGS ?=
# The chaos soak's publishing time and extra arguments, e.g. make chaos CHAOS_MINUTES=30
# CHAOS_ARGS="--seed 7" (docs/reliability.md, "Chaos soak").
CHAOS_MINUTES ?= 10
CHAOS_ARGS ?=
# The test suite runs the benchmark harness's smoke run, so the bench tools are installed too.
EXTRAS ?= dev,bench

.PHONY: help run test test-unit test-integration test-chaos chaos lint bench bench-smoke broker \
	install docs clean compose-up compose-down

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 18

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "queuewatch needs Python 3.11+; $(PYTHON) is $$($(PYTHON) --version 2>&1)." \
	       "Install one, or run: make PYTHON=python3.11 ..."; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "could not create $(VENV); on Debian/Ubuntu: apt-get install python3-venv"; exit 1; }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install queuewatch with its test and bench tools

$(LIBS)/.fetched: infra/kafka/pom.xml
	@command -v java >/dev/null || { echo "java 17+ is needed to run the Kafka broker:" \
	  "apt-get install openjdk-17-jre-headless"; exit 1; }
	@command -v mvn >/dev/null || { echo "mvn (Apache Maven) is needed to fetch the Kafka" \
	  "broker: apt-get install maven"; exit 1; }
	mvn -q -B -Dstyle.color=never -f infra/kafka/pom.xml package
	@touch $@

broker: $(LIBS)/.fetched ## Fetch the Apache Kafka broker's jars with Maven (once)

run: install broker ## Run the whole pipeline on this machine until Ctrl-C
	$(BIN)/queuewatch up $(UP_ARGS)

test: install broker ## Run every test: unit, integration (real Kafka, chdb), chaos
	$(BIN)/pytest $(PYTEST_FLAGS) tests

test-unit: install ## Only the unit tests (no broker, seconds)
	$(BIN)/pytest $(PYTEST_FLAGS) tests/unit

test-integration: install broker ## Only the integration tests
	$(BIN)/pytest $(PYTEST_FLAGS) tests/integration

test-chaos: install broker ## Only the chaos tests (kill, restart, outage)
	$(BIN)/pytest $(PYTEST_FLAGS) tests/chaos

chaos: install broker ## The full chaos soak: kills, broker kills, outage, scaling, then checks
	$(BIN)/python -m tests.chaos.soak --minutes $(CHAOS_MINUTES) $(CHAOS_ARGS)

lint: install ## ruff (lint and format check) and mypy
	$(BIN)/ruff check services tests benchmarks
	$(BIN)/ruff format --check services tests benchmarks
	$(BIN)/mypy

docs: install ## Regenerate the settings table in README.md
	$(BIN)/queuewatch settings --readme README.md

bench: install broker ## The full benchmarks (docs/performance.md)
	$(BIN)/python -m benchmarks.run --full

bench-smoke: install broker ## A minute-long run of every benchmark, to check they work
	$(BIN)/python -m benchmarks.run --smoke

# The compose settings file; QUEUEWATCH_IMAGE (there or in the environment) names a prebuilt
# image, which compose-up then pulls or uses instead of building.
COMPOSE_ENV ?= .env
COMPOSE_IMAGE := $(or $(QUEUEWATCH_IMAGE),$(shell sed -n 's/^QUEUEWATCH_IMAGE=//p' $(COMPOSE_ENV) 2>/dev/null))
COMPOSE_BUILD := $(if $(COMPOSE_IMAGE),--no-build,--build)

compose-up: ## Start the docker compose deployment (needs .env); builds unless QUEUEWATCH_IMAGE is set
	@test -f $(COMPOSE_ENV) || { echo "no $(COMPOSE_ENV): cp .env.example .env, then follow it"; exit 1; }
	$(if $(COMPOSE_IMAGE),QUEUEWATCH_IMAGE=$(COMPOSE_IMAGE) )docker compose -f infra/docker-compose.yml \
	  --env-file $(COMPOSE_ENV) up -d $(COMPOSE_BUILD)

compose-down: ## Stop the docker compose deployment (the volumes, i.e. the data, are kept)
	docker compose -f infra/docker-compose.yml --env-file $(COMPOSE_ENV) down

clean: ## Remove local state (the broker's log, the embedded ClickHouse) and build output
	@if [ -e var/up.lock ] && command -v flock >/dev/null && ! flock -n var/up.lock true; then \
	  echo "queuewatch up is running on var/ (pid $$(cat var/up.lock)); stop it first"; exit 1; fi
	rm -rf var infra/kafka/target .pytest_cache .mypy_cache .ruff_cache
