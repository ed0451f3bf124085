# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-test system-deps system-deps-test lint

# The demo installs what it runs, nothing only the tests need.
demo: install system-deps
	$(BIN)/mdd data experiments/fashion_mnist.yaml
	$(BIN)/mdd-run experiments/fashion_mnist.yaml

test: install-test system-deps-test lint
	$(BIN)/python -m pytest -q

lint: install-test
	$(BIN)/ruff check mdd tests benchmarks
	$(BIN)/ruff format --check mdd tests benchmarks

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# pip takes torch 2.14.1 from this machine's disk where it lies there, else from PyPI.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# Fashion-MNIST from Debian where this machine can install it; elsewhere mdd downloads
# the data itself. The tests' part adds PostgreSQL, Chromium and SLURM.
system-deps:
	bash scripts/system-deps.sh demo

system-deps-test:
	bash scripts/system-deps.sh test
