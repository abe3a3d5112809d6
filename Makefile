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

# The lab: every command on real data, each into its own run directory under runs/lab/.
# DATA is the shared data root (CIFAR-10, ImageNet samples, ...); override with DATA=/path.
LAB := runs/lab/$(shell date +%Y%m%d-%H%M%S)
lab: install
	$(BIN)/cnnlab params alexnet-paper --out $(LAB)/params-alexnet
	$(BIN)/cnnlab params alexnet-paper --groups 2 --sharing --summary --out $(LAB)/params-sharing
	$(BIN)/cnnlab params resnet18 resnet34 resnet50 resnet101 resnet152 --summary --out $(LAB)/params-resnets
	$(BIN)/cnnlab evaluate $(DATA)/imagenet-samples --out $(LAB)/evaluate
	$(BIN)/cnnlab charrnn train --words hello green start --out $(LAB)/charrnn-words
	$(BIN)/cnnlab charrnn complete $(LAB)/charrnn-words h g s e t
	@echo "lab results: $(LAB) (evaluate report: $(LAB)/evaluate/report.html)"

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --durations=15

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
