# Everything a fresh Debian machine with Python 3.11+ needs, in two commands:
#   make demo   starts a private RabbitMQ node and runs the work-queue demo
#   make test   lint, type-check, build the docs, then the whole test suite against a private node
# RabbitMQ is installed with apt-get when missing (as root); see leveret.testing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck docs pytest setup broker clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint,docs]'
	touch $(STAMP)

setup: $(STAMP)

broker: setup
	$(PY) -m leveret.testing install

demo: broker
	$(PY) -m leveret.demo

lint: setup
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/ruff format --check src tests examples benchmarks

typecheck: setup
	$(VENV)/bin/mypy

# The documentation site (mkdocs.yml, docs/) into site/; any warning fails the build.
# tests/docs runs every code block of it against the private node.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

pytest: broker
	$(PY) -m pytest

test: lint typecheck docs pytest

bench: broker
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) site .bench-venv .bench-venv-carehare .mypy_cache .ruff_cache .pytest_cache .hypothesis
