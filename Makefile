# pcam: the two commands of the README.
#   make demo   install, generate the demo dataset, run the whole DAG on CPU, build the report
#   make test   install, then the whole test suite (pytest, snakemake --lint, snakefmt, ruff)
#   make demo-tools  the same DAG on the demo's second style into results-tools/ (config/demo-tools.yaml)
#   make demo-seeds  seeds 1 and 2 of the demo's weak experiments into results-seeds/ (config/demo-seeds.yaml)
#   make docs   after `make demo`: snapshot results/ into docs/results/demo (and results-tools/ after
#               `make demo-tools` into docs/results/demo-tools, results-seeds/ after `make demo-seeds`
#               into docs/results/demo-seeds), render docs/*.md.in

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
SNAKEMAKE := $(BIN)/snakemake
# The workstation profile (rerun-incomplete, retries of training). A run killed earlier leaves
# Snakemake's lock behind: the workflow removes it when provably stale (README, "Resuming").
WORKSTATION := --profile workflow/profiles/workstation

# Rules call `pcam`: the venv's bin comes first on PATH for every recipe.
export PATH := $(BIN):$(PATH)

.PHONY: install demo demo-tools demo-seeds docs test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(SNAKEMAKE) $(WORKSTATION) --cores $(CORES)
	$(SNAKEMAKE) $(WORKSTATION) --cores $(CORES) --report results/report.html
	@echo
	@$(BIN)/pcam show-summary results/summary.csv

# The demo's settings on the "tools" style (only demo.style, the data and output folders differ).
TOOLS := --configfile config/demo-tools.yaml
demo-tools: $(STAMP)
	$(SNAKEMAKE) $(WORKSTATION) --cores $(CORES) $(TOOLS)
	$(SNAKEMAKE) $(WORKSTATION) --cores $(CORES) $(TOOLS) --report results-tools/report.html
	@echo
	@$(BIN)/pcam show-summary results-tools/summary.csv

# Seeds 1 and 2 of puzzle and baseline on the demo's data (seed 0 is `make demo`).
SEEDS := --configfile config/demo-seeds.yaml
demo-seeds: $(STAMP)
	$(SNAKEMAKE) $(WORKSTATION) --cores $(CORES) $(SEEDS)
	@echo
	@$(BIN)/pcam show-summary results-seeds/summary.csv

# Not part of `demo`: it rewrites committed files (and would mark the next run's tree dirty).
docs: $(STAMP)
	test ! -d results-tools || $(BIN)/pcam render-docs --snapshot demo-tools --results results-tools
	test ! -d results-seeds || $(BIN)/pcam render-docs --snapshot demo-seeds --results results-seeds
	$(BIN)/pcam render-docs --snapshot demo --results results

lint: $(STAMP)
	$(SNAKEMAKE) --lint
	$(BIN)/snakefmt --check workflow
	$(BIN)/ruff check pcam tests benchmarks
	$(BIN)/ruff format --check pcam tests benchmarks

test: $(STAMP)
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory lint

clean:
	rm -rf results logs .snakemake data/demo results-tools logs-tools data/demo-tools results-seeds logs-seeds
