# queuewatch: the two commands a new user needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LIBS   := infra/kafka/target/libs
STAMP  := $(VENV)/.installed

.PHONY: run test test-unit test-integration lint bench bench-smoke broker install clean compose-up compose-down

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install queuewatch with its test tools

$(LIBS)/.fetched: infra/kafka/pom.xml
	@command -v mvn >/dev/null || { echo "mvn (Apache Maven) is needed to fetch the Kafka broker: apt-get install maven"; exit 1; }
	@command -v java >/dev/null || { echo "java 17+ is needed to run the Kafka broker: apt-get install openjdk-17-jre-headless"; exit 1; }
	mvn -q -B -f infra/kafka/pom.xml package
	@touch $@

broker: $(LIBS)/.fetched ## Fetch the Apache Kafka broker's jars with Maven

run: install broker ## Run the whole pipeline on this machine (broker, processors, simulator)
	$(BIN)/queuewatch up

test: install broker ## Run every test (unit, integration against a real broker and chdb, chaos)
	$(BIN)/pytest tests

test-unit: install
	$(BIN)/pytest tests/unit

lint: install
	$(BIN)/ruff check services tests benchmarks
	$(BIN)/ruff format --check services tests benchmarks
	$(BIN)/mypy

bench: install broker
	$(BIN)/pip install -q -e ".[dev,bench]"
	$(BIN)/python -m benchmarks.run --full

bench-smoke: install broker
	$(BIN)/pip install -q -e ".[dev,bench]"
	$(BIN)/python -m benchmarks.run --smoke

compose-up: ## Build the image and start the docker compose deployment (needs .env)
	@test -f .env || { echo "no .env: cp .env.example .env, then set the passwords in it"; exit 1; }
	docker compose -f infra/docker-compose.yml --env-file .env up -d --build

compose-down: ## Stop the docker compose deployment (the volumes, i.e. the data, are kept)
	docker compose -f infra/docker-compose.yml --env-file .env down

clean: ## Remove local state (the broker's log, the embedded ClickHouse) and build output
	rm -rf var infra/kafka/target .pytest_cache .mypy_cache .ruff_cache
