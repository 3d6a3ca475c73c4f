"""DPO and IPO: the losses as the papers write them, and DPO learning a preference on a tiny character-level
Llama: its loss falls, the held-out (by prompt) accuracy of its implicit reward rises, weights change."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from core.run import RunContext
from core.tracking import NullTracker
from core.types import Preferences, Response
from plugins.envs.text import TextEnv
from plugins.lm import load_causal_lm
from plugins.optimizers.dpo import DPO, dpo_loss, implicit_rewards
from plugins.policies.text import TextPolicy
from tests.plugins.text_data import sentiment_records


def test_dpo_is_minus_log_sigmoid_of_beta_times_the_log_ratio_gap_and_ipo_its_squared_distance_to_half_over_beta(
        ) -> None:
    chosen, rejected = torch.tensor([1.0, 0.0, -2.0]), torch.tensor([0.0, 0.0, 1.0])
    h = chosen - rejected
    torch.testing.assert_close(dpo_loss(chosen, rejected, beta=0.1), torch.log1p(torch.exp(-0.1 * h)))
    assert dpo_loss(chosen, rejected, beta=0.1)[1].item() == pytest.approx(math.log(2))  # no preference yet
    torch.testing.assert_close(dpo_loss(chosen, rejected, beta=0.1, loss="ipo"), (h - 5.0) ** 2)
    stats = implicit_rewards(chosen, rejected, beta=0.5)
    assert stats["chosen_reward"].item() == pytest.approx(0.5 * -1 / 3)
    assert stats["margin"].item() == pytest.approx(0.5 * (-1 / 3 - 1 / 3))
    assert stats["accuracy"].item() == pytest.approx((1 + 0.5 + 0) / 3)  # a tie counts half


def review_preferences(n: int) -> Preferences:
    """Pairs of short reviews to 4 prompts, the one with positive words preferred (tests/plugins/text_data.py) and
    given gold 1 (the other 0)."""
    items, pairs = [], []
    for record in sentiment_records(n, seed=0, ranking_every=0):
        items += [Response(record["prompt"], record["chosen"], gold=1.0),
                  Response(record["prompt"], record["rejected"], gold=0.0)]
        pairs.append((len(items) - 2, len(items) - 1))
    return Preferences(items, np.array(pairs))


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_dpo_learns_the_preference_its_held_out_accuracy_rises_and_the_weights_change(
        char_lm_dir: str, tmp_path: Path, loss: str) -> None:
    env = TextEnv(model=char_lm_dir, max_new_tokens=12)
    tracker = NullTracker()
    L.seed_everything(0)
    policy = DPO(lora=None, lr=1e-3, epochs=3, batch_size=16, val_fraction=0.25, loss=loss).fit(  # type: ignore[arg-type]
        env, None, RunContext(0, tmp_path, tracker, progress=False), preferences=review_preferences(120))  # type: ignore[arg-type]
    assert isinstance(policy, TextPolicy)
    history = {k: [v for _, v in tracker.history[k]] for k in ("dpo/loss", "dpo/accuracy", "dpo/margin")}
    assert np.mean(history["dpo/loss"][-3:]) < np.mean(history["dpo/loss"][:3]) - 0.05, history["dpo/loss"]
    assert history["dpo/accuracy"][0] < 0.6 and history["dpo/accuracy"][-1] >= 0.8, history["dpo/accuracy"]
    assert history["dpo/margin"][-1] > 0
    assert {"dpo/chosen_reward", "dpo/rejected_reward", "dpo/val_loss"} <= set(tracker.history)
    assert tracker.history["dpo/val_true_pair_accuracy"][-1][1] >= 0.8  # against the gold order: the labels are it here

    untouched, _ = load_causal_lm(char_lm_dir)
    changed = [not torch.equal(p, q) for p, q in zip(policy.lm.parameters(), untouched.parameters(), strict=True)]
    assert all(changed)


def test_dpo_with_lora_trains_only_the_adapters_and_its_reference_stays_the_starting_model(
        char_lm_dir: str, tmp_path: Path) -> None:
    env = TextEnv(model=char_lm_dir, max_new_tokens=12)
    lora = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj", "down_proj", "lm_head"]}
    tracker = NullTracker()
    L.seed_everything(0)
    policy = DPO(lora=lora, lr=1e-2, epochs=2, val_fraction=0.25).fit(  # type: ignore[arg-type]
        env, None, RunContext(0, tmp_path, tracker, progress=False), preferences=review_preferences(60))  # type: ignore[arg-type]
    assert isinstance(policy, TextPolicy)
    trained = {name for name, p in policy.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in name for name in trained)
    assert tracker.history["dpo/accuracy"][-1][1] > 0.6
    rollout, _ = policy.sample(env.eval_prompts, seed=3)
    base = TextPolicy(load_causal_lm(char_lm_dir)[0], policy.tokenizer, 12, reference=False)
    with torch.no_grad():
        torch.testing.assert_close(policy.score_tokens(rollout, reference=True)[0], base.score_tokens(rollout)[0])


def test_dpo_refuses_preferences_over_anything_but_responses(char_lm_dir: str, tmp_path: Path) -> None:
    env = TextEnv(model=char_lm_dir, max_new_tokens=12)
    with pytest.raises(TypeError, match="policy=dpo learns from preferences over text responses"):
        DPO().fit(env, None, RunContext(0, tmp_path, NullTracker(), progress=False))  # type: ignore[arg-type]


def test_copies_of_a_response_become_one_item_so_a_prompts_pairs_are_one_group() -> None:
    from plugins.response_pairs import merge_identical, preference_groups

    copies = [Response("p", "good"), Response("p", "fine"), Response("p", "good"), Response("p", "bad"),
              Response("p", "fine"), Response("p", "bad"),
              Response("q", "good"), Response("q", "bad")]  # (a labeler's pairs, each with its own copies)
    prefs = Preferences(copies, np.array([[0, 1], [2, 3], [4, 5], [6, 7]]))
    merged = merge_identical(prefs)
    assert [(r.prompt, r.text) for r in merged.items] == [("p", "good"), ("p", "fine"), ("p", "bad"), ("q", "good"),
                                                          ("q", "bad")]
    assert merged.pairs.tolist() == [[0, 1], [0, 2], [1, 2], [3, 4]]
    assert sorted(len(items) for items, _ in preference_groups(merged)) == [2, 3]  # one group per prompt
