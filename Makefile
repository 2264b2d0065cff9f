# Token Authority: `make run` starts the service, `make test` checks everything.
# Every target sets up what it needs from a clean clone: venv, install, generated stubs.

PYTHON_BOOT ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
PY          := $(BIN)/python
export PATH := $(abspath $(BIN)):$(PATH)

PROTOS      := $(wildcard protos/authority/v1/*.proto)
GEN_DIR     := clients/python/src/authority/v1
GEN_STAMP   := $(GEN_DIR)/.stamp
INSTALL_STAMP := $(VENV)/.installed
VAR         := var
TOKEN_FILE  := $(VAR)/admin-token
# Where `make run` serves: LISTEN= on the make line, else AUTHORITY_LISTEN, else the default.
LISTEN      ?= $(or $(AUTHORITY_LISTEN),127.0.0.1:50051)
PYTEST_ARGS ?=

# `make run-cluster`: replicas on one local PostgreSQL database, one port each.
CLUSTER_POSTGRES ?= postgresql://postgres@127.0.0.1:5432
CLUSTER_DATABASE ?= authority
CLUSTER_PORTS    ?= 50051 50052 50053
CLUSTER_TOKEN_FILE := $(VAR)/cluster-admin-token

.PHONY: all install generate migrate run run-cluster test test-thin lint typecheck unit integration bench clean

all: generate

$(INSTALL_STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -U pip
	$(PY) -m pip install -q --disable-pip-version-check -e ./clients/python -e '.[dev]'
	touch $@

install: $(INSTALL_STAMP)

$(GEN_STAMP): $(INSTALL_STAMP) $(PROTOS)
	rm -rf $(GEN_DIR) && mkdir -p $(GEN_DIR)
	$(PY) -m grpc_tools.protoc -I protos \
	  --python_out=clients/python/src --grpc_python_out=clients/python/src \
	  --mypy_out=quiet:clients/python/src --mypy_grpc_out=quiet:clients/python/src \
	  $(PROTOS)
	touch $(GEN_DIR)/py.typed $@

generate: $(GEN_STAMP)

migrate: generate
	$(BIN)/authority migrate

# First start: migrate, create the first global administrator (token kept in $(TOKEN_FILE),
# readable only by you), print how to use it, then serve in the foreground.
run: generate
	@mkdir -p $(VAR) && chmod 700 $(VAR)
	@$(BIN)/authority migrate
	@if [ ! -s $(TOKEN_FILE) ]; then \
	  if (umask 077 && $(BIN)/authority bootstrap --quiet > $(TOKEN_FILE).tmp); then \
	    mv $(TOKEN_FILE).tmp $(TOKEN_FILE); \
	    echo "Created the first global administrator; its token is in $(TOKEN_FILE) (mode 600)."; \
	  else \
	    rm -f $(TOKEN_FILE).tmp; \
	    echo "No $(TOKEN_FILE), and this database already has an administrator: use its token."; \
	  fi; \
	fi
	@$(BIN)/authority hint --listen $(LISTEN) --token-file $(TOKEN_FILE)
	@exec $(BIN)/authority serve --listen $(LISTEN)

# Replicas on the local PostgreSQL (database $(CLUSTER_DATABASE), created if missing), sharing
# var/pepper; the first administrator is created once, its token kept in $(CLUSTER_TOKEN_FILE)
# (not var/admin-token, which `make run` fills for its own database). Ctrl-C stops them all;
# when one replica stops, the others are stopped too.
run-cluster: export AUTHORITY_DATABASE_URL := $(CLUSTER_POSTGRES)/$(CLUSTER_DATABASE)
run-cluster: generate
	@mkdir -p $(VAR) && chmod 700 $(VAR)
	@psql "$(CLUSTER_POSTGRES)/postgres" -tAc \
	  "SELECT 1 FROM pg_database WHERE datname = '$(CLUSTER_DATABASE)'" | grep -q 1 || \
	  psql "$(CLUSTER_POSTGRES)/postgres" -qc 'CREATE DATABASE "$(CLUSTER_DATABASE)"'
	@$(BIN)/authority migrate
	@if [ ! -s $(CLUSTER_TOKEN_FILE) ]; then \
	  if (umask 077 && $(BIN)/authority bootstrap --quiet > $(CLUSTER_TOKEN_FILE).tmp); then \
	    mv $(CLUSTER_TOKEN_FILE).tmp $(CLUSTER_TOKEN_FILE); \
	    echo "Created the first global administrator; its token is in $(CLUSTER_TOKEN_FILE) (mode 600)."; \
	  else \
	    rm -f $(CLUSTER_TOKEN_FILE).tmp; \
	    echo "No $(CLUSTER_TOKEN_FILE), and this database already has an administrator: use its token."; \
	  fi; \
	fi
	@$(BIN)/authority hint --listen 127.0.0.1:$(firstword $(CLUSTER_PORTS)) \
	  $(foreach port,$(wordlist 2,$(words $(CLUSTER_PORTS)),$(CLUSTER_PORTS)),--replica 127.0.0.1:$(port)) \
	  --token-file $(CLUSTER_TOKEN_FILE)
	@pids=; \
	trap 'kill $$pids 2>/dev/null; wait; exit 0' INT TERM; \
	for port in $(CLUSTER_PORTS); do \
	  $(BIN)/authority serve --listen 127.0.0.1:$$port & pids="$$pids $$!"; \
	done; \
	while kill -0 $$pids 2>/dev/null; do sleep 1; done; \
	echo "A replica stopped: stopping the others."; kill $$pids 2>/dev/null; wait; exit 1

lint: generate
	$(BIN)/ruff check src clients/python/src/authority/client tests bench
	$(BIN)/ruff format --check src clients/python/src/authority/client tests bench

typecheck: generate
	$(BIN)/mypy src clients/python/src/authority/client bench tests

unit: generate
	$(BIN)/pytest tests/unit -q $(PYTEST_ARGS)

# The suite's own servers are grpcio, the fallback (they start in a fraction of a second; see
# tests/harness.py); these tests of the hot methods and of what a caller sees run again against
# the thin server, the default, on SQLite. `make test-thin` runs every integration test against
# it (about 8 minutes here). The thin server's own tests (test_thin_*) run in both.
THIN_TESTS := $(addprefix tests/integration/test_,smoke.py validate_batch_stream.py \
  validate_cache.py access_tokens.py tokens_api.py grpcurl.py readme.py hostile_input.py \
  watch_events.py client_exchange.py offline_verifier.py)

# Twice the cores: much of the suite waits on servers, subprocesses and PostgreSQL, not on the
# CPU (on 2 cores, 4 workers finish in about two thirds of the time 2 take).
TEST_WORKERS ?= 4

test: lint typecheck
	$(BIN)/pytest -n $(TEST_WORKERS) -q $(PYTEST_ARGS)
	AUTHORITY_TEST_SERVER=thin $(BIN)/pytest -n $(TEST_WORKERS) -q -m "not postgres" $(THIN_TESTS) $(PYTEST_ARGS)

test-thin: lint typecheck
	AUTHORITY_TEST_SERVER=thin $(BIN)/pytest -n $(TEST_WORKERS) -q tests/integration $(PYTEST_ARGS)

bench: generate
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(GEN_DIR) build dist .mypy_cache .ruff_cache .pytest_cache
