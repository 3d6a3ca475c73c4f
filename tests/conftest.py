"""Shared test helpers: compose the real Hydra config with overrides, as the CLI would."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before anything imports torch: one thread per test process

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.cli import compose_run  # noqa: E402


def compose_with_choices(*overrides: str) -> tuple[DictConfig, dict[str, str]]:
    """The config `python main.py <overrides>` would run and its group choices (core.cli.compose_run)."""
    return compose_run(*overrides)


def compose_config(*overrides: str) -> DictConfig:
    """The config `python main.py <overrides>` would run, with the Hydra node removed."""
    return compose_with_choices(*overrides)[0]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test inside an empty folder (mlflow.db, outputs/ land there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random Llama (SmolLM2's family and tokenizer) saved as a folder, loaded by the real
    from_pretrained path wherever a model name is accepted (env.model=..., policy.model=...)."""
    from plugins.lm import tiny_causal_lm

    folder = tmp_path_factory.mktemp("tiny_llama")
    model, tokenizer = tiny_causal_lm(hidden_size=32, num_layers=1, num_heads=2, seed=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random BERT with MiniLM's tokenizer saved as a folder (a reward model backbone)."""
    from plugins.lm import tiny_encoder

    folder = tmp_path_factory.mktemp("tiny_bert_backbone")
    model, tokenizer = tiny_encoder(hidden_size=32, num_layers=2, num_heads=4, seed=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def char_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random Llama over a 35-token character vocabulary (tests/plugins/text_data.py)."""
    from tests.plugins.text_data import save_char_lm

    return str(save_char_lm(tmp_path_factory.mktemp("char_llama")))
