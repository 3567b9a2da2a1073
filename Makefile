# Set-up and everyday commands. `make run` and `make test` create the
# virtualenv, install the package and resolve Spark's jars on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(PY))
PYTEST_ARGS ?=

.PHONY: setup run test test-all test-fast typecheck clean browser

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

# Debian's chromium for the browser tests, installed with apt-get (as root) when it is missing.
browser:
	@command -v chromium >/dev/null 2>&1 || if [ "$$(id -u)" = 0 ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	else echo "chromium is missing and apt-get needs root: the browser tests will skip (and fail under CI=true)"; fi

# The default suite: every test not marked slow, plus the end-to-end runs on
# real data marked e2e. test-all adds the remaining slow tests (cluster,
# browser, drift histories, fault injection), which take far longer.
test: setup typecheck .cache/bin/helm
	$(PY) -m pytest -m "not slow or e2e" $(PYTEST_ARGS)

test-all: setup typecheck .cache/bin/helm browser
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf output build dist .cache .mypy_cache .pytest_cache
