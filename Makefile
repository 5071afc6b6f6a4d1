# The two commands of the README, and the venv they share.
#   make demo       the main job: synthetic data, local Ray, the smoke sweep, MLflow, the report
#   make test       the test suite (what CI runs)
#   make test-fast  the tests without Ray or long training: the edit loop
#   make test-gpu   the CUDA tests (marker cuda), on a machine with a GPU; skipped elsewhere
# Both create .venv in this checkout and install the project into it when it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-gpu test-fast clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/pgnet demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=10

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m cuda -rs --durations=5

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not ray and not slow" --durations=5

clean:
	rm -rf runs mlruns mlflow.db .cache .pytest_cache
