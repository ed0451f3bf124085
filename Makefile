# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install system-deps lint

demo: install system-deps
	$(BIN)/mdd data experiments/fashion_mnist.yaml
	$(BIN)/mdd-run experiments/fashion_mnist.yaml

test: install system-deps lint
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check mdd tests benchmarks
	$(BIN)/ruff format --check mdd tests benchmarks

install: $(VENV)/.installed

# pip takes torch 2.14.1 from this machine's disk where it lies there, else from PyPI.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# Fashion-MNIST from Debian and a PostgreSQL server for the distributed-sweep tests,
# where this machine can install them; elsewhere mdd downloads the data itself.
system-deps:
	bash scripts/system-deps.sh
