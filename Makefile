# `make` alone lists the targets. Every target that needs Python sets up what it needs first.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch build to install. On Linux without a GPU, add
#   TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cpu
# to skip the multi-GB CUDA build.
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
# `make train` needs the package alone; the lessons and the tests add the lab and dev extras.
TRAIN_STAMP := $(VENV)/.setup-train
SETUP_STAMP := $(VENV)/.setup-complete
# `make bench` adds the bench extra: transformers' Trainer, the way practitioners train today.
BENCH_STAMP := $(VENV)/.setup-bench
# Where `make train` saves its run; a new folder each time, so no run is ever overwritten.
RUN_DIR ?= runs/chapter-$(shell date +%Y%m%d-%H%M%S)
# Where `make experiments` keeps its runs and tables; rows already there are read, not rerun.
EXPERIMENTS_DIR ?= experiments

# The lessons that `make lessons` runs in the book profile (LESSONS=notebooks/07_*.ipynb: one).
LESSONS ?= $(sort $(wildcard notebooks/[0-9]*.ipynb))
# The notebooks are checked, and re-saved, in the smoke profile: seconds, no network.
NOTEBOOK_ENV := GPTCLASSIFIER_PROFILE=smoke
# The markers (pyproject.toml) that `make test-fast` leaves out.
FAST_TESTS := not slow and not real_data and not browser and not network
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval-sanitize.cfg

.PHONY: help setup setup-train lab prepare train experiments bench test test-fast notebooks lessons lint clean

help: ## List the targets
	@echo "gptclassifier: fine-tune GPT-2 into a spam classifier"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-11s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(SETUP_STAMP) ## Create .venv with the package, JupyterLab and the test tools (idempotent)

setup-train: $(TRAIN_STAMP) ## Create .venv with the package and its command line only (idempotent)

$(TRAIN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH_INDEX) "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(SETUP_STAMP): $(TRAIN_STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[lab,dev]"
	touch $@

$(BENCH_STAMP): $(TRAIN_STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[bench]"
	touch $@

lab: setup ## Open JupyterLab on the lessons, at lesson 1 (LAB_ARGS: more JupyterLab options)
	$(BIN)/python -m gptclassifier.lessons.lab $(LAB_ARGS)

prepare: setup-train ## Write the chapter's train/validation/test CSVs to data/prepared
	$(BIN)/gptclassifier prepare --out data/prepared

train: setup-train ## Fine-tune GPT-2 small as the chapter does (TRAIN_ARGS=--fast: the fastest way)
	$(BIN)/gptclassifier train --profile book --out $(RUN_DIR) $(TRAIN_ARGS)

experiments: setup-train ## The book's design experiments that fit this machine, and two baselines (EXPERIMENT_ARGS=--dry-run: the plan only)
	$(BIN)/gptclassifier experiments --profile book --out $(EXPERIMENTS_DIR) $(EXPERIMENT_ARGS)

bench: $(BENCH_STAMP) ## Time the chapter's loop, the package's ways and transformers' Trainer on the same work (BENCH_ARGS=--quick: minutes)
	$(BIN)/python benchmarks/finetune_speed.py $(BENCH_ARGS)

test: setup ## Run the tests, and strict nbval on every notebook
	$(NOTEBOOK_ENV) $(BIN)/python -m pytest $(NBVAL) tests notebooks

test-fast: setup ## The quick subset for the edit-test loop: no slow, real-data, browser or network tests, no notebooks
	$(NOTEBOOK_ENV) $(BIN)/python -m pytest -m "$(FAST_TESTS)" tests

notebooks: setup ## Re-run every notebook top to bottom in the smoke profile and save its outputs
	$(NOTEBOOK_ENV) $(BIN)/jupyter nbconvert --to notebook --execute --inplace notebooks/*.ipynb

lessons: setup ## Run every lesson top to bottom in the book profile; print each one's time as a table; save nothing
	@echo "| lesson | book profile |"; echo "|---|---:|"; \
	for lesson in $(LESSONS); do \
		start=$$(date +%s); \
		GPTCLASSIFIER_PROFILE=book $(BIN)/jupyter nbconvert --to notebook --execute --stdout \
			--log-level=WARN "$$lesson" > /dev/null || exit 1; \
		echo "| \`$$(basename "$$lesson" .ipynb)\` | $$(( $$(date +%s) - start )) s |"; \
	done

lint: setup ## Check style with ruff
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean: ## Remove .venv, caches, prepared data, runs and experiments (not the download cache)
	rm -rf $(VENV) data runs experiments notebooks/runs .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name '*.egg-info' -type d -prune -exec rm -rf {} +
