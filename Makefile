# Two commands do everything on a fresh machine (as root, or with sudo for the data package):
#   make run    install, then run the default experiment on Fashion-MNIST
#   make test   install, then run the test suite
VENV ?= .venv
PYTHON ?= python3
DATA_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test install data bench

install: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e ".[test]"
	touch $@

# Fashion-MNIST comes from Debian's dataset-fashion-mnist (no download at run time).
data:
	@[ -f $(DATA_DIR)/train-images-idx3-ubyte.gz ] || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

run: install
	$(VENV)/bin/fedsim run $(ARGS)

# pytest's exit code 5 (no tests collected) is a failure here, not a silent pass.
test: install
	$(VENV)/bin/python -m pytest -q $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: install
	$(VENV)/bin/python experiments/bench_overhead.py $(ARGS)
