"""GRPO: group-standardised advantages, the k3 KL estimator and the loss's per-response averaging as plain
functions; that it raises a known reward on a tiny character-level Llama with the KL to the reference bounded
(and tighter with a larger beta), with every weight and with LoRA adapters alone; its config, its checks, and
the pipeline with it (and its refusal of a control env)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch

from core.compat import IncompatibleError
from core.interfaces import Capabilities, Environment, IterationCallback, Policy, RewardModel
from core.pipeline import plugin_node, run_pipeline
from core.run import Checkpointing, RunContext
from core.schema import ConfigError, check_plugin
from core.tracking import NullTracker
from core.types import Preferences
from plugins.envs.text import TextEnv
from plugins.lm import load_causal_lm
from plugins.optimizers.grpo import GRPO, group_advantages, grpo_loss, k3_kl
from plugins.policies.text import TextPolicy
from tests.conftest import compose_config, compose_with_choices


# ---------------------------------------------------------------- the plain functions
def test_advantages_are_standardised_within_each_group_and_zero_where_a_group_ties() -> None:
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0])
    adv = group_advantages(scores, group_size=4)
    std = math.sqrt(5.0 / 3.0)  # the sample std of 1, 2, 3, 4
    expected = torch.tensor([-1.5, -0.5, 0.5, 1.5, 0.0, 0.0, 0.0, 0.0]) / (std + 1e-4)
    torch.testing.assert_close(adv, expected)
    pairs = group_advantages(torch.tensor([0.0, 2.0, -1.0, -3.0]), group_size=2)
    torch.testing.assert_close(pairs, torch.tensor([-1.0, 1.0, 1.0, -1.0]) / (math.sqrt(2.0) + 1e-4))


def test_the_k3_estimator_is_exact_on_small_values_never_negative_and_unbiased() -> None:
    logp = torch.log(torch.tensor([0.5, 0.5, 0.25]))
    ref = torch.log(torch.tensor([0.25, 0.5, 0.5]))
    torch.testing.assert_close(k3_kl(logp, ref), torch.tensor([0.5 + math.log(2) - 1, 0.0, 2 - math.log(2) - 1]))
    assert bool((k3_kl(torch.randn(1000), torch.randn(1000)) >= 0).all())
    # Its mean over tokens drawn from pi is KL(pi || ref).
    gen = torch.Generator().manual_seed(0)
    p, q = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.5, 0.3])
    tokens = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    estimate = k3_kl(p.log()[tokens], q.log()[tokens]).mean()
    assert float(estimate) == pytest.approx(float((p * (p / q).log()).sum()), abs=5e-3)


def test_the_loss_averages_over_each_responses_tokens_then_over_responses() -> None:
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, 0.0, 0.0]], requires_grad=True)
    advantages = torch.tensor([1.0, -2.0])
    # On-policy and at the reference: ratio 1, KL 0, so the loss is -mean(A) and each token of response i
    # carries -A_i / (B |o_i|) of the gradient whatever the length of the others.
    loss, stats = grpo_loss(logprobs, logprobs.detach(), logprobs.detach(), advantages, mask, 0.2, 0.04)
    loss.backward()
    assert float(loss) == pytest.approx(0.5) and float(stats["kl_term"]) == 0.0 and float(stats["clipfrac"]) == 0.0
    assert logprobs.grad is not None
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-1 / 6, -1 / 6, -1 / 6], [1.0, 0.0, 0.0]]))
    # The KL term: beta times the mean over responses of each response's mean k3.
    ref = logprobs.detach() + torch.tensor([[math.log(2), 0.0, 0.0], [math.log(0.5), 0.0, 0.0]])
    loss, stats = grpo_loss(logprobs, logprobs.detach(), ref, torch.zeros(2), mask, 0.2, 0.5)
    k3 = [2 - math.log(2) - 1, 0.5 + math.log(2) - 1]
    assert float(stats["kl_term"]) == pytest.approx((k3[0] / 3 + k3[1]) / 2)
    assert float(loss) == pytest.approx(0.5 * (k3[0] / 3 + k3[1]) / 2)


def test_a_ratio_outside_the_clip_range_gets_no_gradient_from_the_surrogate() -> None:
    mask = torch.ones(1, 2)
    old = torch.tensor([[-1.0, -1.0]])
    logprobs = torch.tensor([[-1.0 + math.log(1.5), -1.0]], requires_grad=True)  # ratios 1.5 (clipped) and 1
    loss, stats = grpo_loss(logprobs, old, logprobs.detach(), torch.tensor([1.0]), mask, 0.2, 0.0)
    loss.backward()
    assert logprobs.grad is not None
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, -0.5]]))
    assert float(stats["clipfrac"]) == 0.5


# ---------------------------------------------------------------- learning on a tiny model
class SpaceShare(RewardModel):
    """A known reward of text: the share of a response's characters that are spaces (more, shorter words)."""

    capabilities = Capabilities(observations=frozenset({"text"}), actions=frozenset({"token"}))

    def fit(self, prefs: Preferences, env: Environment, run: RunContext) -> None:
        raise NotImplementedError

    def reward(self, obs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return np.array([r.count(" ") / max(1, len(r)) for r in responses], dtype=np.float32)


ITERATIONS = 14
BASE = {"prompts_per_batch": 4, "group_size": 4, "update_epochs": 4, "num_minibatches": 2, "learning_rate": 3e-3,
        "eval_every": 0, "total_timesteps": 16 * 12 * ITERATIONS, "lora": None}


def train(char_lm_dir: str, tmp_path: Path, **overrides: Any) -> tuple[TextPolicy, NullTracker]:
    env = TextEnv(model=char_lm_dir, max_new_tokens=12)
    tracker = NullTracker()
    L.seed_everything(0)
    policy = GRPO(**{**BASE, **overrides}).fit(env, SpaceShare(), RunContext(0, tmp_path, tracker, progress=False))
    assert isinstance(policy, TextPolicy)
    return policy, tracker


def series(tracker: NullTracker, name: str) -> list[float]:
    return [v for _, v in tracker.history[name]]


def test_grpo_raises_the_reward_with_the_kl_bounded_and_changes_the_weights(char_lm_dir: str, tmp_path: Path) -> None:
    policy, tracker = train(char_lm_dir, tmp_path, kl_coef=0.04)
    learned, kl = series(tracker, "train/learned_return"), series(tracker, "train/kl")
    assert len(learned) == ITERATIONS
    # (seeds 0 to 2 on one machine: the first three batches' mean 0.025..0.051, the last three's 0.22..0.54)
    assert np.mean(learned[-3:]) > np.mean(learned[:3]) + 0.1, learned
    assert 0.0 < kl[-1] < 25.0, kl
    for name in ("train/entropy", "train/clipfrac", "train/approx_kl", "train/sps", "train/true_return",
                 "grpo/loss", "grpo/kl_term", "grpo/reward_std"):
        assert tracker.history[name], name
    assert all(v >= 0 for v in series(tracker, "grpo/kl_term")) and series(tracker, "grpo/reward_std")[0] > 0
    untouched, _ = load_causal_lm(char_lm_dir)
    before = dict(untouched.named_parameters())
    changed = [n for n, p in policy.lm.named_parameters() if not torch.equal(p.detach(), before[n].detach())]
    assert changed, "no weight moved"


def test_a_larger_beta_keeps_the_policy_closer_to_the_reference(char_lm_dir: str, tmp_path: Path) -> None:
    _, free = train(char_lm_dir, tmp_path / "free", kl_coef=0.0)
    _, held = train(char_lm_dir, tmp_path / "held", kl_coef=1.0)
    # (on one machine: the last five iterations' KL 3.1..11.5 nats without the penalty, 0.2..0.8 with beta 1)
    assert np.mean(series(held, "train/kl")[-5:]) < 0.5 * np.mean(series(free, "train/kl")[-5:])


def test_with_lora_only_the_adapters_train_and_the_reward_rises(char_lm_dir: str, tmp_path: Path) -> None:
    # As in the text PPO's test: on one 32-wide layer the output projection is adapted too.
    lora = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj", "down_proj", "lm_head"]}
    policy, tracker = train(char_lm_dir, tmp_path, lora=lora, learning_rate=1e-2)
    trained = {name for name, p in policy.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in name for name in trained)
    learned = series(tracker, "train/learned_return")
    assert np.mean(learned[-3:]) > np.mean(learned[:3]) + 0.1, learned
    rollout, _ = policy.sample(TextEnv(model=char_lm_dir, max_new_tokens=12).eval_prompts, seed=3)
    with torch.no_grad():
        assert (policy.score_tokens(rollout)[0] - policy.score_tokens(rollout, reference=True)[0]).abs().max() > 1e-3


class Counter(IterationCallback):
    """Counts the batches collected (it is called after each); stops at the start of iteration `stop_at` (0: never)."""

    def __init__(self, stop_at: int) -> None:
        self.stop_at, self.calls = stop_at, 0

    def __call__(self, policy: Policy, env_steps: int, recent_return: float) -> bool:
        self.calls += 1
        return 0 < self.stop_at == self.calls - 1


def test_a_fit_stopped_mid_way_resumes_from_its_checkpoint_to_the_same_end(char_lm_dir: str, tmp_path: Path) -> None:
    """The checkpoint holds the adapters, Adam, the current batch (taken mid-iteration here) and the random
    streams: a fit resumed from it logs and ends as an uninterrupted one."""
    env = TextEnv(model=char_lm_dir, max_new_tokens=12)
    hp = {**BASE, "lora": {"r": 4, "alpha": 8}, "total_timesteps": 16 * 12 * 5}  # 5 iterations of 8 updates

    def fit(folder: str, checkpoint: Checkpointing | None, stop_at: int = 0) -> tuple[TextPolicy, NullTracker, int]:
        """stop_at: stop at the start of that iteration (0: never); returns the batches collected too."""
        tracker, callback = NullTracker(), Counter(stop_at)
        L.seed_everything(0)
        run = RunContext(0, tmp_path / folder, tracker, progress=False, checkpoint=checkpoint)
        policy = GRPO(**hp).fit(env, SpaceShare(), run, callback=callback)
        assert isinstance(policy, TextPolicy)
        return policy, tracker, callback.calls

    whole, whole_log, batches = fit("whole", None)
    path = tmp_path / "stopped.ckpt"
    fit("stopped", Checkpointing(path, every=13), stop_at=3)  # saved after step 13: iteration 1's 5th update
    assert path.is_file()
    resumed, resumed_log, resumed_batches = fit("resumed", Checkpointing(path, every=13, resume=True))
    assert (batches, resumed_batches) == (5, 3)  # it went on with iteration 1's batch from the checkpoint
    assert series(resumed_log, "train/learned_return") == series(whole_log, "train/learned_return")
    assert series(resumed_log, "grpo/loss") == series(whole_log, "grpo/loss")
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


# ---------------------------------------------------------------- config and pipeline
def test_policy_grpo_composes_with_env_text_and_debug_and_instantiates() -> None:
    cfg = compose_config("env=text", "policy=grpo", "experiment=debug")
    assert cfg.policy._target_ == "plugins.optimizers.grpo.GRPO" and cfg.policy.total_timesteps == 256
    grpo = GRPO(**{str(k): v for k, v in plugin_node(cfg, "policy").items() if k != "_target_"})
    assert grpo.hp.group_size == 4 and grpo.hp.kl_coef == 0.04 and grpo.hp.lora is not None
    assert grpo.hp.lora.target_modules[0] == "q_proj"


def test_bad_fields_are_named_as_policy_keys() -> None:
    with pytest.raises(ConfigError, match=r"policy\.num_minibatches \(3\) does not divide"):
        GRPO(num_minibatches=3)
    with pytest.raises(ConfigError, match=r"policy\.kl_coefficient: unknown"):
        GRPO(kl_coefficient=0.1)
    problems = check_plugin({"_target_": "plugins.optimizers.grpo.GRPO", "group_size": 1, "lora": {"r": 0}},
                            "policy", {})  # what the pipeline checks before any work
    assert problems == ["policy.group_size: 1: must be an integer >= 2", "policy.lora.r: 0: must be an integer >= 1"]


def test_grpo_runs_through_the_pipeline_on_a_tiny_model(in_tmp: Path, char_lm_dir: str) -> None:
    cfg, choices = compose_with_choices("experiment=debug", "env=text", f"env.model={char_lm_dir}", "policy=grpo",
                                        "reward=true", "tracking=none", "progress=false", "policy.lora=null")
    metrics = run_pipeline(cfg, choices, in_tmp / "out")
    assert {"eval/gold_reward_mean", "eval/kl_to_ref", "eval/win_rate_vs_ref"} <= set(metrics)
    assert (in_tmp / "out" / "checkpoints" / "policy" / "rexlab.yaml").is_file()


def test_a_control_env_is_refused_naming_text(in_tmp: Path) -> None:
    cfg, choices = compose_with_choices("env=cartpole", "policy=grpo", "reward=true", "tracking=none")
    with pytest.raises(IncompatibleError, match=r"policy=grpo cannot work with env=cartpole.*\['text'\]"):
        run_pipeline(cfg, choices, in_tmp / "out")
