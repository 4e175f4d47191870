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

# The lowest TRL setup.cfg allows, and the smoke tests run on it (every stage that trains through TRL).
TRL_LOWEST ?= 1.13.0
LOWEST := .trl-lowest
SMOKE := tests/test_sft.py tests/test_reward.py tests/test_po.py tests/test_rl_group.py \
	tests/test_ppo.py::test_ppo_writes_policy_adapter_metrics_samples_and_manifest \
	tests/test_ppo.py::test_group_algorithms_run_on_the_same_reward_and_keys

.PHONY: install test test-fast test-lowest quickstart style quality clean

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

# TRL $(TRL_LOWEST) installed alone into a folder put ahead of .venv's packages: the same torch, transformers
# and the rest, only TRL older (what a user pinned to the lowest supported TRL runs).
test-lowest: install
	rm -rf $(LOWEST)
	$(PY) -m pip install -q --no-deps --target $(LOWEST) "trl==$(TRL_LOWEST)"
	PYTHONPATH=$(abspath $(LOWEST)) $(PY) -c "import trl; assert trl.__version__ == '$(TRL_LOWEST)', trl.__file__"
	PYTHONPATH=$(abspath $(LOWEST)) $(PY) -m pytest $(XDIST) $(SMOKE) $(PYTEST_ARGS)

quickstart: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/hftune pipeline --config configs/quickstart.yaml

style: install
	$(VENV)/bin/ruff format hftune tests bench
	$(VENV)/bin/ruff check --fix hftune tests bench

quality: install
	$(VENV)/bin/ruff check hftune tests bench

clean:
	rm -rf runs build dist *.egg-info .pytest_cache .ruff_cache $(LOWEST)
