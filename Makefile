# cnnlab: `make lab` installs and runs the main job, `make test` installs and runs the tests.
# Everything lives in a local virtual environment (.venv); nothing is installed system-wide.

PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
DATA   ?= ../shared/data

.PHONY: install lab test lint clean

$(BIN)/cnnlab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/cnnlab

# The lab: both course labs end to end (`cnnlab lab`), every step a cnnlab run under runs/lab/,
# one report (runs/lab/report.html). Re-running continues: finished steps whose settings and
# inputs are unchanged are kept. DATA is the shared data root; override with DATA=/path.
lab: install
	$(BIN)/cnnlab lab --data-root $(DATA) --out runs/lab

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --durations=15

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
