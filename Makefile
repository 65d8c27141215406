# gemma-local: two commands to remember, `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# llama-cpp-python compiles llama.cpp from source (~9 min on 2 cores). pip caches the built
# wheel, so this happens once per machine; CMAKE_ARGS selects GPU backends (see README).
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
# llama.cpp's RPC backend (`gemma-local worker`, --rpc) is always built, next to the user's backends.
LLAMA_CMAKE_ARGS := -DGGML_RPC=ON $(CMAKE_ARGS)
# pip's wheel cache ignores CMAKE_ARGS, so it may hand back a wheel built without RPC. `llama-rpc`
# then rebuilds it, and keeps the result here (per CMAKE_ARGS) so that happens once per machine.
LLAMA_WHEELS ?= $(HOME)/.cache/gemma-local/llama-wheels/$(shell printf '%s' '$(LLAMA_CMAKE_ARGS)' | cksum | cut -d' ' -f1)
HAS_RPC := $(BIN)/python -c "from gemma_local.engine.rpc import supported; raise SystemExit(not supported())"
HOST ?= 127.0.0.1
PORT ?= 8080
# The coding agents the client tests drive (tests/test_agent_round_trips.py), pinned exactly; `make agents`.
AGENTS := .agents
CODEX_VERSION := 0.171.0
CLAUDE_CODE_VERSION := 2.1.332
AGENTS_STAMP := $(AGENTS)/.installed-codex-$(CODEX_VERSION)-claude-code-$(CLAUDE_CODE_VERSION)

.PHONY: install llama-rpc run test lint bench agents clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel

$(STAMP): pyproject.toml | $(BIN)/python
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install -e '.[embedded,search,test]'
	touch $(STAMP)

install: $(STAMP) llama-rpc

# Checked on every install (a second): an older venv, or a wheel pip reused, may lack RPC.
llama-rpc: $(STAMP)
	@if $(HAS_RPC); then exit 0; fi; \
	version=$$($(BIN)/python -c "import importlib.metadata as m; print(m.version('llama-cpp-python'))"); \
	wheel=$$(ls $(LLAMA_WHEELS)/llama_cpp_python-$$version-*.whl 2>/dev/null | head -n 1); \
	if [ -z "$$wheel" ]; then \
		echo "llama-cpp-python $$version has no RPC backend: rebuilding it with $(LLAMA_CMAKE_ARGS) (~10 min on 2 cores)"; \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip wheel --no-cache-dir --no-deps \
			-w $(LLAMA_WHEELS) "llama-cpp-python==$$version" || exit 1; \
		wheel=$$(ls $(LLAMA_WHEELS)/llama_cpp_python-$$version-*.whl | head -n 1); \
	fi; \
	$(BIN)/python -m pip install --force-reinstall --no-deps "$$wheel" || exit 1; \
	$(HAS_RPC) || { echo "llama-cpp-python still has no RPC backend (CMAKE_ARGS: $(LLAMA_CMAKE_ARGS))"; exit 1; }

run: install
	$(BIN)/gemma-local serve --host $(HOST) --port $(PORT)

# The client tests (tests/test_agent_round_trips.py) need the coding agents: installed when npm
# is here (CI has it); without Node they skip with one line, and a failed install only warns.
test: install
	@if command -v npm >/dev/null 2>&1; then $(MAKE) agents || echo "warning: make agents failed; the coding-agent tests will skip"; \
	else echo "npm not found: the Codex CLI and Claude Code tests will skip"; fi
	$(BIN)/python -m ruff check gemma_local tests bench
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: install
	$(BIN)/python -m ruff check gemma_local tests bench

bench: install
	$(BIN)/python -m pip install -q -e '.[embedded,search,test,bench]'
	$(BIN)/python bench/run_all.py

# Codex CLI and Claude Code from npm, into the git-ignored .agents/ (binaries in
# .agents/node_modules/.bin). npm no longer runs install scripts unless approved, and Claude
# Code's postinstall (install.cjs) is what puts the native binary in place of the `claude`
# stub, so it is run here explicitly.
$(AGENTS_STAMP):
	rm -rf $(AGENTS) && mkdir -p $(AGENTS)
	npm install --prefix $(AGENTS) --save-exact --no-audit --no-fund \
		@openai/codex@$(CODEX_VERSION) @anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION)
	cd $(AGENTS)/node_modules/@anthropic-ai/claude-code && node install.cjs
	$(AGENTS)/node_modules/.bin/codex --version
	$(AGENTS)/node_modules/.bin/claude --version
	touch $@

agents: $(AGENTS_STAMP)

clean:
	rm -rf $(VENV) build *.egg-info
