# The two commands of the README, and the venv they share.
#   make demo   the main job: synthetic data, local Ray, the smoke sweep, MLflow, the report
#   make test   the test suite
# Both create .venv in this checkout and install the project into it when it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

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

clean:
	rm -rf runs mlruns mlflow.db .cache .pytest_cache
