# The two commands of the README, and the chores behind them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch: installed before the project so that its `torch>=` requirement
# is already met (a bare `torch` would pull several GB of CUDA packages).
TORCH  ?= torch==2.13.0

.PHONY: setup quickstart demo test lint proto bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet --no-build-isolation 'deepspeed>=0.15'
	$(BIN)/pip install --quiet -e '.[dev,bench,trainer]'
	touch $@

quickstart: setup
	$(BIN)/python examples/quickstart/run.py

demo: setup
	$(BIN)/python examples/scoring/run.py

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
