# gemma-local: two commands to remember, `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# llama-cpp-python compiles llama.cpp from source (~9 min on 2 cores). pip caches the built
# wheel, so this happens once per machine; CMAKE_ARGS selects GPU backends (see README).
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: install run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[embedded,search,test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/gemma-local serve --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m ruff check gemma_local tests bench
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: install
	$(BIN)/python -m ruff check gemma_local tests bench

bench: install
	$(BIN)/python -m pip install -q -e '.[embedded,search,test,bench]'
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
