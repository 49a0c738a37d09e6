# Two commands on a fresh machine: `make demo` (set up, run the pipeline on the synthetic mirror) and `make test`.
# The environment is a local .venv made with pip: torch and torchvision are pinned to the wheels on this machine's
# disk (uv and poetry would download several GB instead).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: setup test test-fast demo lint clean-data

$(BIN)/cxrexplain: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]" $(TORCH)
	touch $@

setup: $(BIN)/cxrexplain  ## create .venv with the project and its dev tools

# Two pytest-xdist workers, each test file in one worker, in collection order (the DVC pipeline's file first: see
# tests/conftest.py, which also gives each worker its share of the cores' threads). `pytest` alone runs serially.
XDIST := -n 2 --dist loadfile --no-loadscope-reorder

test: setup  ## the whole suite, the reduced DVC pipeline included
	$(BIN)/python -m pytest $(XDIST)

test-fast: setup  ## unit tests only (no DVC pipeline run)
	$(BIN)/python -m pytest $(XDIST) -m "not slow"

# After `dvc repro`, `report --log-only` logs reports/ to MLflow unless a report run for it and these trainings is
# there: in a fresh clone DVC retrains but keeps the committed report when the predictions come out identical.
demo: setup  ## the pipeline on the synthetic mirror with the demo profile (params.yaml on main; re-rendered here)
	$(BIN)/cxrexplain params --profile demo
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/cxrexplain report --log-only
	@echo "Synthetic data, not medical evidence. Report: reports/report.html (open in a browser) and reports/report.md;"
	@echo "metrics: reports/metrics.json, metrics/*.json ($(BIN)/dvc metrics show); runs: $(BIN)/cxrexplain compare,"
	@echo "or the MLflow UI: $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db  (then http://127.0.0.1:5000)"
	@echo "The study's configuration (real NIH data, GPU): $(BIN)/cxrexplain params --profile study (README)"

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

clean-data:  ## remove pipeline outputs (not the download)
	rm -rf data/cache data/split.csv models explain
