# Two commands do all the set-up on a fresh machine:
#   make demo   virtualenv + project + embedded demo (SQLite MLflow registry, local Parquet), then score one day
#   make test   virtualenv + project with test extras, then the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_ROOT ?= .demo
DEMO_DAY ?= 2026-11-01
# The versions the suite last passed with: pyproject.toml keeps lower bounds for users of the
# library; installs here are pinned, reproducible and spared pip's backtracking over new releases.
PIP_INSTALL := $(BIN)/pip install --quiet -c constraints.txt

.PHONY: demo test dev bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

demo: $(BIN)/python
	$(PIP_INSTALL) -e ".[demo]"
	$(BIN)/ml-assets demo --root $(DEMO_ROOT)
	$(BIN)/ml-assets score models:/fraud@champion $(DEMO_ROOT)/data/transactions $(DEMO_ROOT)/scores/fraud \
		--partition date=$(DEMO_DAY) --passthrough transaction_id,customer_id \
		--registry-uri sqlite:///$(abspath $(DEMO_ROOT))/mlflow.db

dev: demo
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dagster dev -w workspace.yaml

test: $(BIN)/python
	$(PIP_INSTALL) -e ".[test]"
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest

bench: $(BIN)/python
	$(PIP_INSTALL) -e ".[test]"
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/bench_onnx.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/bench_inprocess.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/bench_remote.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/bench_s3_commit.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/bench_ray.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/bench_quarantine.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/bench_columnar.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/bench_columnar.py --encodings
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/bench_wide.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/bench_flavors.py

lint: $(BIN)/python
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(DEMO_ROOT) .bench .pytest_cache
