# The two commands of the README, and the chores behind them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup quickstart test lint proto bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

quickstart: setup
	$(BIN)/python examples/quickstart/run.py

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

proto: setup
	$(BIN)/python scripts/gen_proto.py

bench: setup
	$(BIN)/python bench/reward_service.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
