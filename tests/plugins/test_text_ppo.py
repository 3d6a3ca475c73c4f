"""Text PPO: the KL-shaped reward, advantages over response tokens, the KL controller, and that it
raises a reward on a tiny random Llama while the KL to the reference stays bounded, with every weight
and with LoRA adapters alone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from core.interfaces import Capabilities, Environment, RewardModel
from core.run import RunContext
from core.tracking import NullTracker
from core.types import Preferences
from plugins.envs.text import TextEnv
from plugins.lm import load_causal_lm
from plugins.optimizers.text_ppo import KLController, TextPPO, shaped_rewards, token_advantages
from plugins.policies.text import TextPolicy


def test_the_shaped_reward_is_the_kl_penalty_plus_the_score_on_the_last_token() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, -1.0], [-0.5, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rewards = shaped_rewards(torch.tensor([2.0, -1.0]), logprobs, ref, mask, beta=0.1)
    expected = torch.tensor([[-0.05, 0.1, 2.0], [-0.05 - 1.0, 0.0, 0.0]])
    torch.testing.assert_close(rewards, expected)


def test_advantages_are_rewards_to_go_within_each_response() -> None:
    rewards = torch.tensor([[0.0, 1.0, 2.0], [3.0, 5.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = token_advantages(rewards * mask, torch.zeros(2, 3), mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[3.0, 3.0, 2.0], [8.0, 5.0, 0.0]]))
    torch.testing.assert_close(ret, adv)
    values = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 9.0]])  # the value past an end is never used
    adv, ret = token_advantages(rewards * mask, values, mask, gamma=1.0, lam=0.0)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 1.0, 1.0], [3.0, 3.0, 0.0]]))  # r + V(next) - V


def test_the_adaptive_controller_moves_beta_towards_the_target() -> None:
    fixed, adaptive = KLController(0.2, False, 6.0, 100), KLController(0.2, True, 6.0, 100)
    fixed.update(50.0, 10)
    adaptive.update(50.0, 10)  # far above the target: the error is clipped at +0.2
    assert fixed.value == 0.2 and adaptive.value == pytest.approx(0.2 * (1 + 0.2 * 10 / 100))
    adaptive.update(3.0, 10)  # half the target: an error of -0.5, clipped to -0.2
    assert adaptive.value == pytest.approx(0.2 * 1.02 * 0.98)


class SpaceShare(RewardModel):
    """A known reward of text: the share of a response's characters that are spaces (more, shorter words)."""

    capabilities = Capabilities(observations=frozenset({"text"}), actions=frozenset({"token"}))

    def fit(self, prefs: Preferences, env: Environment, run: RunContext) -> None:
        raise NotImplementedError

    def reward(self, obs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return np.array([r.count(" ") / max(1, len(r)) for r in responses], dtype=np.float32)


def test_text_ppo_raises_the_reward_while_the_kl_stays_bounded(char_lm_dir: str, tmp_path: Path) -> None:
    env = TextEnv(model=char_lm_dir, max_new_tokens=12)
    hparams = {"batch_size": 16, "num_minibatches": 2, "update_epochs": 4, "learning_rate": 3e-3, "kl_coef": 0.5,
               "eval_every": 0, "total_timesteps": 16 * 12 * 14, "lora": None}
    tracker = NullTracker()
    L.seed_everything(0)
    policy = TextPPO(hparams).fit(env, SpaceShare(), RunContext(0, tmp_path, tracker, progress=False))
    assert isinstance(policy, TextPolicy)
    learned = [v for _, v in tracker.history["train/learned_return"]]
    kl = [v for _, v in tracker.history["train/kl"]]
    assert len(learned) == 14
    assert np.mean(learned[-3:]) > np.mean(learned[:3]) + 0.1, learned
    assert 0.0 < kl[-1] < 10.0, kl
    assert tracker.history["train/entropy"] and tracker.history["train/clipfrac"]
    # Held-out prompts, averaged over 5 sampling seeds: one draw of 20 short responses is noisy (on one
    # machine the policy led the reference by 0.09 to 0.16 across seeds, 0.12 on average).
    held_out = [(SpaceShare().score([], policy.sample(env.eval_prompts, seed=s)[1]).mean(),
                 SpaceShare().score([], policy.sample(env.eval_prompts, seed=s, reference=True)[1]).mean())
                for s in range(5)]
    policy_share, ref_share = np.mean(held_out, axis=0)
    assert policy_share > ref_share + 0.08, held_out


def test_with_lora_only_the_adapters_and_value_head_train_the_reward_rises_and_the_reference_stays(
        char_lm_dir: str, tmp_path: Path) -> None:
    env = TextEnv(model=char_lm_dir, max_new_tokens=12)
    # One 32-wide layer: adapters on the hidden layers alone barely move the next-token choice here (the reward
    # did not rise at lr 3e-2 to 1e-1), so the output projection is adapted too, as peft allows.
    lora = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj", "down_proj", "lm_head"]}
    hparams = {"batch_size": 16, "num_minibatches": 2, "update_epochs": 4, "learning_rate": 1e-2, "kl_coef": 0.5,
               "eval_every": 0, "total_timesteps": 16 * 12 * 14, "lora": lora}
    tracker = NullTracker()
    L.seed_everything(0)
    policy = TextPPO(hparams).fit(env, SpaceShare(), RunContext(0, tmp_path, tracker, progress=False))
    assert isinstance(policy, TextPolicy)
    trained = {name for name, p in policy.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in name or "value_head" in name for name in trained)
    learned = [v for _, v in tracker.history["train/learned_return"]]
    assert np.mean(learned[-3:]) > np.mean(learned[:3]) + 0.1, learned  # the adapters alone learn
    assert 0.0 < tracker.history["train/kl"][-1][1] < 10.0
    untouched, _ = load_causal_lm(char_lm_dir)
    rollout, _ = policy.sample(env.eval_prompts, seed=3)
    reference, _, _ = policy.score_tokens(rollout, reference=True)
    base = TextPolicy(untouched, policy.tokenizer, 12, reference=False)
    with torch.no_grad():
        torch.testing.assert_close(reference, base.score_tokens(rollout)[0])  # adapters off = the initial model
        assert (policy.score_tokens(rollout)[0] - reference).abs().max() > 1e-3  # the policy moved


def test_target_kl_stops_a_batchs_updates_at_the_trust_regions_edge(char_lm_dir: str, tmp_path: Path) -> None:
    env = TextEnv(model=char_lm_dir, max_new_tokens=12)
    hparams = {"batch_size": 16, "num_minibatches": 2, "update_epochs": 4, "learning_rate": 3e-3, "kl_coef": 0.5,
               "eval_every": 0, "total_timesteps": 16 * 12 * 6, "lora": None}
    runs = {}
    for target in (None, 0.01):
        tracker = NullTracker()
        L.seed_everything(0)
        TextPPO(hparams | {"target_kl": target}).fit(env, SpaceShare(), RunContext(0, tmp_path, tracker,
                                                                                   progress=False))
        runs[target] = ([v for _, v in tracker.history["train/approx_kl"]],
                        [v for _, v in tracker.history["train/updates"]])
    free_kl, free_updates = runs[None]
    kl, updates = runs[0.01]
    assert free_updates == [8.0] * 6 and max(free_kl) > 0.015, runs  # at this step size one batch leaves the region
    assert min(updates) < 8, runs  # the stop cut some batches short
    # the logged KL (of the minibatch that stopped a batch, or of its last) stays below the free run's
    assert np.median(kl) < np.median(free_kl), runs
