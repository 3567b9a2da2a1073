# Set-up and everyday commands. `make run` and `make test` create the
# virtualenv, install the package and resolve Spark's jars on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(PY))
PYTEST_ARGS ?=

.PHONY: setup run test test-fast typecheck clean

setup: $(VENV)/.installed .cache/jars.ok

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10 or newer is required"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

.cache/jars.ok: $(VENV)/.installed scripts/fetch_jars.py
	$(PY) scripts/fetch_jars.py
	mkdir -p .cache && touch $@

run: setup
	$(VENV)/bin/anomaly-spark run $(ARGS)

typecheck: setup
	$(VENV)/bin/mypy anomaly_spark

# helm is compiled from the Go module proxy for the chart tests (a few minutes on first use).
.cache/bin/helm: scripts/install-helm.sh
	bash scripts/install-helm.sh

test: setup typecheck .cache/bin/helm
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf output build dist .cache .mypy_cache .pytest_cache
