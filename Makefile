# Two commands on a fresh machine:  `make quickstart` (the main job) and `make test` (the test suite).
# Both create .venv and install hftune into it first. TORCH picks the torch build: the default is the
# CPU wheel this project is tested with; on a GPU machine use e.g. `make TORCH=torch install`.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
# The suite in parallel, one worker a core, a test module at a time (its fixtures built once); each worker
# runs one torch thread (tests/conftest.py).
XDIST := -n auto --dist loadfile --no-loadscope-reorder

.PHONY: install test test-fast quickstart style quality clean

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest $(XDIST) -m "not integration and not e2e" $(PYTEST_ARGS)

quickstart: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/hftune pipeline --config configs/quickstart.yaml

style: install
	$(VENV)/bin/ruff format hftune tests bench
	$(VENV)/bin/ruff check --fix hftune tests bench

quality: install
	$(VENV)/bin/ruff check hftune tests bench

clean:
	rm -rf runs build dist *.egg-info .pytest_cache .ruff_cache
