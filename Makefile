# Two entry points: `make repro` (set up, then run the pipeline) and `make test`.
# Both create .venv and install the pinned stack on first use; afterwards they reuse it.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.saefs-installed
FORTUNES := $(VENV)/share/saefs/fortunes/.pinned
# DVC stages run `python -m pipelines.<stage>`: make that the venv's python.
export PATH := $(abspath $(BIN)):$(PATH)

# Offline and no-telemetry, for every command below (pipelines/__init__.py sets the same
# defaults for stages started by a bare `dvc repro`).
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true DVC_NO_ANALYTICS=1 WANDB_MODE=disabled
export GX_ANALYTICS_ENABLED=false TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

.PHONY: install repro test test-fast clean-venv

install: $(STAMP) $(FORTUNES)

# Re-runs only when the lock or the project metadata changes, so a second `make` is instant.
# This machine's pip config lists index folders that may be absent: drop that noise only.
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check
QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip==26.3 $(QUIET)
	$(PIP) torch==2.13.0 $(QUIET)  # the CPU wheel first, so nothing pulls a CUDA build
	$(PIP) --no-deps -r requirements.lock $(QUIET)
	$(PIP) --no-deps --no-build-isolation -e . $(QUIET)
	$(BIN)/python -m pipelines.web_assets  # pinned Vega and Swagger UI, so every page renders offline
	touch $@

# Debian's Spanish and Italian fortunes for the `fortune:` sources (apt-get download and dpkg-deb -x, no root);
# again when their pins (features/sources/fortunes.py) change. Packages already unpacked are skipped.
$(FORTUNES): $(STAMP) features/sources/fortunes.py
	$(BIN)/python -m pipelines.fortunes
	touch $@

repro: install
	$(BIN)/dvc repro

# Whole modules handed to pytest-xdist workers, one per core up to 4, the longest first (tests/conftest.py orders
# them): the suite waits on subprocesses (DVC, stage forks, servers) much of its time; 2 workers on 2 cores: 0.68x.
PARALLEL := -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder

test: install
	$(BIN)/pytest $(PARALLEL)

test-fast: install
	$(BIN)/pytest $(PARALLEL) -m "not slow"

clean-venv:
	rm -rf $(VENV)
