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

.PHONY: all install generate migrate run test lint typecheck unit integration bench clean

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

lint: generate
	$(BIN)/ruff check src clients/python/src/authority/client tests bench
	$(BIN)/ruff format --check src clients/python/src/authority/client tests bench

typecheck: generate
	$(BIN)/mypy src clients/python/src/authority/client bench

unit: generate
	$(BIN)/pytest tests/unit -q $(PYTEST_ARGS)

test: lint typecheck
	$(BIN)/pytest -n 2 -q $(PYTEST_ARGS)

bench: generate
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(GEN_DIR) build dist .mypy_cache .ruff_cache .pytest_cache
