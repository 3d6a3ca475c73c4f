"""policy=sft and policy=pretrain on a tiny character-level Llama: the loss, prompt masking, data files
named in errors, and that held-out loss falls."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from core.interfaces import EnvReward
from core.run import RunContext
from core.tracking import NullTracker
from plugins.envs.text import TextEnv
from plugins.lm import load_causal_lm
from plugins.optimizers.lm_training import (
    IGNORE,
    SFT,
    DataFileError,
    Pretrain,
    causal_lm_loss,
    read_corpus,
    read_demonstrations,
)
from plugins.policies.text import TextPolicy
from plugins.reviews import DATA


def test_the_loss_predicts_each_token_from_the_ones_before_and_skips_ignored_labels() -> None:
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = 5.0  # position 0 predicts token 1's label
    labels = torch.tensor([[IGNORE, 2, 3]])
    expected = (torch.nn.functional.cross_entropy(logits[0, :2], torch.tensor([2, 3])))
    torch.testing.assert_close(causal_lm_loss(logits, labels), expected)
    masked = torch.tensor([[IGNORE, 2, IGNORE]])
    torch.testing.assert_close(causal_lm_loss(logits, masked), torch.nn.functional.cross_entropy(logits[0, :1],
                                                                                               torch.tensor([2])))


def test_bundled_data_reads_and_malformed_lines_are_named(tmp_path: Path) -> None:
    assert len(read_demonstrations(DATA / "review_demos.jsonl")) == 40
    assert len(read_corpus(DATA / "review_corpus.txt")) == 20
    bad = tmp_path / "demos.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n" + json.dumps({"prompt": "a"}) + "\n"
                   + json.dumps({"prompt": "a", "response": 3}) + "\n")
    with pytest.raises(DataFileError) as err:
        read_demonstrations(bad)
    assert f"{bad}:2: field 'response': missing" in str(err.value)
    assert f"{bad}:3: field 'response': must be a string" in str(err.value)


def test_sft_masks_the_prompt_and_keeps_the_eos(char_lm_dir: str) -> None:
    lm, tokenizer = load_causal_lm(char_lm_dir)
    policy = TextPolicy(lm, tokenizer, 8, reference=False)
    env = TextEnv(model=char_lm_dir, max_new_tokens=8)
    [(ids, labels), _] = SFT(max_length=64).examples(policy, env, _demo_file(Path(char_lm_dir).parent / "two.jsonl",
                                                                             2))
    prompt = policy.encode(env.present(["great film"]))[0]  # the prompt as the task puts it to the model
    assert labels[: len(prompt)] == [IGNORE] * len(prompt) and ids[: len(prompt)] == prompt
    assert labels[len(prompt):] == ids[len(prompt):] and ids[-1] == policy.eos_id


def _demo_file(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": "great film", "response": " i loved it, a lovely story."}) + "\n"
                            for _ in range(n)))
    return path


@pytest.mark.parametrize("optimizer", [SFT, Pretrain])
def test_training_lowers_the_held_out_loss(char_lm_dir: str, tmp_path: Path, optimizer: type) -> None:
    env = TextEnv(model=char_lm_dir, max_new_tokens=8)
    tracker = NullTracker()
    L.seed_everything(0)
    trainer = optimizer(epochs=3, batch_size=8, lr=3e-3, max_length=64, val_fraction=0.2)
    policy = trainer.fit(env, EnvReward(), RunContext(0, tmp_path, tracker, progress=False))
    val = [v for _, v in tracker.history[f"{trainer.prefix}/val_loss"]]
    assert tracker.history[f"{trainer.prefix}/train_loss"]
    assert val[-1] < val[0] - 0.3, val
    assert isinstance(policy, TextPolicy) and policy.has_reference
