# The two commands: `make run` and `make test`. Both create .venv from the lock files first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=
# Two pytest workers on two cores. Measured on fresh clones (README, Development): -n 2, -n 3
# and a 4-worker split (two low-priority workers for the modules that mostly wait) all took
# 15.6-16.6 min, within this box's spread; -n 3 and the split used ~220 s more CPU (three
# TensorFlow processes on two cores). Session 19: three workers, the last taking the waiting
# modules first at normal priority and the others at nice 5, ended no sooner either (634 vs
# 632 s; 840 vs 858 s) on 11-18% more CPU. Tests sharing a module-scoped server or cluster
# stay on one worker (tests/conftest.py's scheduler); every other test is scheduled on its own.
PYTEST_WORKERS ?= -n 2 --dist load

.PHONY: setup compiled run claims test lint bench bench-peers ui screenshots lock clean

setup: $(STAMP)

# Rebuilt whenever a lock file or pyproject changes; the lock files are the source of truth.
# --compile-bytecode: the .pyc files are written once here. Where PYTHONDONTWRITEBYTECODE is set
# (this project's CI machines), Python never writes them and every process compiled TensorFlow,
# MLflow and Prefect from source again: 18 -> 9 s of CPU for `import tensorflow, mlflow, prefect`.
$(STAMP): requirements.lock requirements-bootstrap.lock pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "bnpipe needs Python >= 3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-bootstrap.lock
	$(BIN)/uv pip install --python $(BIN)/python --require-hashes --compile-bytecode -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

# bnpipe's own modules, compiled as the installed ones are (see above); a stale .pyc is ignored.
compiled: setup
	$(BIN)/python -m compileall -q bnpipe flows tests >/dev/null

run: setup compiled
	$(BIN)/bnpipe run $(ARGS)

# Every study under studies/ (reusing finished cells), then reports/claims/claims.md + .html.
claims: setup compiled
	$(BIN)/bnpipe claims $(ARGS)

test: setup compiled
	$(BIN)/pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/bnpipe bench $(ARGS)

# The optional peers of `bnpipe bench --peers jax`, from their own lock (the default install
# stays without them).
bench-peers: setup
	$(BIN)/uv pip install --python $(BIN)/python --require-hashes --compile-bytecode -r requirements-jax.lock

# The MLflow UI on the local store, bound to localhost. MLflow 3.17 opens experiments in its GenAI
# view; the runs table is under "Model training" (the link `bnpipe run` prints opens it directly).
ui: setup
	mkdir -p mlruns
	@echo "MLflow UI: http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
	@echo "  pick the experiment (Model training mode: runs table), or open the parent-run link"
	@echo "  that bnpipe run printed; group the runs by bn and batch_size to compare cells"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000

# PNGs of the MLflow UI over the local store's latest run (headless Chromium; docs/screenshots).
screenshots: setup
	$(BIN)/python -m tests.browser --store mlruns --out docs/screenshots

lock: setup
	$(BIN)/uv pip compile pyproject.toml --group dev --universal --python-version 3.11 \
		--generate-hashes -o requirements.lock
	# The peers' lock pins every shared package where requirements.lock does: installing JAX
	# must not move a version that is part of the cell key.
	$(BIN)/uv pip compile pyproject.toml --group dev --extra jax --universal --python-version 3.11 \
		--generate-hashes -c requirements.lock -o requirements-jax.lock
	echo "uv==$$($(BIN)/uv --version | cut -d' ' -f2)" | $(BIN)/uv pip compile - --universal \
		--python-version 3.11 --generate-hashes --no-header -o requirements-bootstrap.lock

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
