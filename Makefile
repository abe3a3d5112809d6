# cnnlab: `make lab` installs and runs the main job, `make test` installs and runs the tests.
# Everything lives in a local virtual environment (.venv); nothing is installed system-wide.

PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
DATA   ?= ../shared/data

.PHONY: install lab test lint bench clean

$(BIN)/cnnlab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/cnnlab

# The most complete job available today: the architecture inspector on AlexNet as published.
lab: install
	$(BIN)/cnnlab params alexnet-paper
	$(BIN)/cnnlab params alexnet-paper --sharing

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --durations=15

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
