# The two commands: `make demo` (set up + run the whole workflow on the embedded demo) and
# `make test` (set up + run the tests). Both work offline from the package registries alone.
PYTHON ?= python3
VENV ?= .venv
CORES ?= 8
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test lint report clean slurm-demo slurm-drills

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock torch==2.13.0
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[demo,workflow,test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/snakemake --cores $(CORES) all

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules

# The demo as SLURM jobs on a single-node cluster on this machine (root; installs Debian's slurm-wlm,
# slurmdbd, munge and mariadb-server when missing), in runs/slurm-demo; compared with results/ if present.
slurm-demo: install
	bash tests/slurm/demo.sh

# Fault drills on that cluster (after slurm-demo): scancel pretrain, retries, a killed preprocess shard.
slurm-drills: install
	bash tests/slurm/drills.sh

report: install
	$(BIN)/snakemake --report report.html

clean:
	rm -rf results logs benchmarks/out .snakemake data/demo runs
