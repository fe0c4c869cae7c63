# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint lab bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10 or newer is needed (found " + sys.version.split()[0] + "); set PYTHON=python3.x")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: setup
	$(BIN)/runbook run all -p apply true

test: setup lint
	$(BIN)/python -m pytest tests
	$(BIN)/python -m pytest --nbval-lax notebooks -p no:cacheprovider

# The layers of ARCHITECTURE.md (pyproject.toml [tool.importlinter]) and ruff ([tool.ruff]).
lint: setup
	$(BIN)/lint-imports
	$(BIN)/ruff check runbook tests benchmarks

lab: setup
	$(BIN)/jupyter lab --no-browser --ip 127.0.0.1 --ServerApp.root_dir=notebooks

clean:
	rm -rf $(VENV) archive test-artifacts

bench: setup
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)
