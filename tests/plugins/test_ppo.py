from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from core import signals
from core.evaluation import rollout
from core.interfaces import Environment, EnvReward, IterationCallback, Policy
from core.run import Checkpointing, RunContext
from core.tracking import NullTracker
from plugins.envs.atari import AtariEnv
from plugins.envs.gym import GymEnv
from plugins.optimizers.ppo import PPO, ReturnScaler, clipped_policy_loss, gae, rollout_pieces, value_loss
from plugins.policies.mlp import RunningMeanStd
from tests.conftest import compose_config


def test_gae_matches_a_hand_computation() -> None:
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [0.4], [0.3]])
    dones = torch.tensor([[0.0], [1.0], [0.0]])  # the episode ends after step 1
    adv, ret = gae(rewards, values, dones, torch.tensor([0.2]), gamma=0.9, lam=0.5)
    d2 = 3.0 + 0.9 * 0.2 - 0.3
    d1 = 2.0 - 0.4  # no bootstrap past the end of the episode
    d0 = 1.0 + 0.9 * 0.4 - 0.5
    expected = torch.tensor([[d0 + 0.45 * d1], [d1], [d2]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + values)


def test_a_rollout_splits_into_pieces_at_episode_ends_with_real_ends_marked() -> None:
    T, N = 6, 2
    obs = np.arange(T * N * 3, dtype=np.float32).reshape(T, N, 3)
    rewards = np.arange(T * N, dtype=np.float32).reshape(T, N)
    ends, terminated = np.zeros((T, N), bool), np.zeros((T, N), bool)
    ends[1, 0] = terminated[1, 0] = True  # env 0: a real end after step 1
    ends[3, 1] = True  # env 1: a time limit after step 3
    ends[5, 0] = terminated[5, 0] = True  # env 0: a real end at the rollout's last step
    pieces = rollout_pieces(obs, np.zeros((T, N), np.int64), rewards, ends, terminated)
    assert [(len(p), p.info["terminated"]) for p in pieces] == [(2, True), (4, True), (4, False), (2, False)]
    assert np.array_equal(pieces[1].obs, obs[2:6, 0]) and np.array_equal(pieces[3].rewards, rewards[4:, 1])


def test_clipped_surrogate_stops_the_gradient_outside_the_clip_range() -> None:
    old = torch.zeros(2)
    new = torch.log(torch.tensor([1.5, 1.5])).requires_grad_()
    loss, stats = clipped_policy_loss(new, old, torch.tensor([1.0, 1.0]), clip_coef=0.2)
    loss.backward()
    assert torch.allclose(new.grad, torch.zeros(2))  # ratio 1.5 > 1.2 with positive advantage: clipped
    assert stats["clipfrac"] == 1.0
    assert value_loss(torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([2.0]), 0.2) > 0


def test_return_scaler_divides_by_the_discounted_returns_std() -> None:
    scaler = ReturnScaler(num_envs=4, gamma=0.99)
    rewards = np.full((200, 4), 10.0)
    out = scaler(rewards, np.zeros((200, 4), bool))
    assert out[-1, 0] < 1.0  # the std of a growing discounted sum of 10s is well above 10


def test_ppo_learns_cartpole_from_the_true_reward(tmp_path: Path) -> None:
    L.seed_everything(0)
    env = GymEnv("CartPole-v1", "cartpole")
    hp = {"num_envs": 8, "num_steps": 32, "learning_rate": 1e-3, "gamma": 0.98, "gae_lambda": 0.8,
          "num_minibatches": 1, "update_epochs": 20, "ent_coef": 0.0, "normalize_reward": False}
    untrained = np.mean([t.true_return for t in rollout(PPO(hp, 256).fit(
        env, EnvReward(), RunContext(0, tmp_path, NullTracker(), progress=False)), env, 10, seed=1)])
    tracker = NullTracker()
    policy = PPO(hp, total_timesteps=30_000).fit(env, EnvReward(), RunContext(0, tmp_path, tracker, progress=False))
    trained = np.mean([t.true_return for t in rollout(policy, env, 10, seed=1)])
    assert untrained < 60
    assert trained > 150, trained
    assert tracker.history["train/true_return"][-1][1] > tracker.history["train/true_return"][0][1]


def test_ppo_continuous_actions_update_the_gaussian_policy(tmp_path: Path) -> None:
    L.seed_everything(0)
    env = GymEnv("Pendulum-v1", "pendulum")
    hp = {"num_envs": 2, "num_steps": 64, "num_minibatches": 2, "update_epochs": 2, "normalize_obs": True}
    tracker = NullTracker()
    policy = PPO(hp, total_timesteps=256).fit(env, EnvReward(), RunContext(0, tmp_path, tracker, progress=False))
    actions = policy.act(np.zeros((3, 3), np.float32))
    assert actions.shape == (3, 1) and np.all(np.abs(actions) <= 2.0)
    assert not torch.allclose(policy.log_std, torch.zeros(1))  # the std was trained
    assert policy.obs_rms.count > 200


def test_running_mean_std_equals_the_statistics_of_the_whole_stream() -> None:
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(int(rng.integers(1, 9)), 5)) for _ in range(300)]
    stats = RunningMeanStd((5,))
    for batch in batches:
        stats.update(torch.as_tensor(batch) if len(batch) % 2 else batch)  # tensors and arrays alike
    stream = np.concatenate(batches)
    # the prior (mean 0, var 1, count 1e-4) weighs almost nothing
    np.testing.assert_allclose(stats.mean.numpy(), stream.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats.var.numpy(), stream.var(0), rtol=1e-6)
    assert stats.count.item() == pytest.approx(len(stream), abs=1e-3)


def test_target_kl_ends_each_iterations_updates_early(tmp_path: Path) -> None:
    env = GymEnv("CartPole-v1", "cartpole")
    hp = {"num_envs": 2, "num_steps": 32, "num_minibatches": 4, "update_epochs": 4}
    logged = {}
    for target_kl in (None, 1e-12):  # 1e-12: every iteration stops long before its last minibatch
        L.seed_everything(0)
        tracker = NullTracker()
        PPO({**hp, "target_kl": target_kl}, 128).fit(env, EnvReward(), RunContext(0, tmp_path, tracker, progress=False))
        logged[target_kl] = len(tracker.history.get("train/approx_kl", []))  # logged by each last minibatch
    assert logged == {None: 2, 1e-12: 0}


class StopAt(IterationCallback):
    """Sends this process SIGTERM after `iterations` rollouts, as a scheduler would mid-stage."""

    def __init__(self, iterations: int) -> None:
        self.left = iterations

    def __call__(self, policy: Policy, env_steps: int, recent_return: float) -> bool:
        self.left -= 1
        if self.left == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return False


def stopped_and_resumed(env: Environment, hp: dict, steps: int, stop_after: int, tmp: Path,
                        ) -> tuple[Policy, NullTracker]:
    """PPO stopped by SIGTERM after `stop_after` iterations (a checkpoint written), then resumed from it."""
    file = tmp / "policy.ckpt"
    with signals.installed(), pytest.raises(signals.Interrupted):
        L.seed_everything(0)
        PPO(hp, steps).fit(env, EnvReward(), RunContext(0, tmp, NullTracker(), progress=False,
                                                        checkpoint=Checkpointing(file, every=1000)),
                           callback=StopAt(stop_after))
    assert file.exists()
    tracker = NullTracker()
    with signals.installed():
        policy = PPO(hp, steps).fit(env, EnvReward(), RunContext(0, tmp, tracker, progress=False,
                                                                 checkpoint=Checkpointing(file, 1000, resume=True)))
    return policy, tracker


def test_ppo_stopped_mid_training_resumes_to_the_same_policy(tmp_path: Path) -> None:
    env = GymEnv("Pendulum-v1", "pendulum")
    hp = {"num_envs": 2, "num_steps": 64, "num_minibatches": 4, "update_epochs": 2, "normalize_obs": True}
    L.seed_everything(0)
    whole = NullTracker()
    reference = PPO(hp, 640).fit(env, EnvReward(), RunContext(0, tmp_path / "a", whole, progress=False))
    resumed, tracker = stopped_and_resumed(env, hp, 640, stop_after=2, tmp=tmp_path / "b")
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)  # weights and observation statistics
    assert tracker.history["train/true_return"] == whole.history["train/true_return"]


def test_atari_ppo_resumes_with_its_episodes_restarted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Atari's C++ vector env cannot be saved: the resumed run restarts the episodes in progress (at most one per
    env copy is lost), with a warning; the network, Adam and the step counters go on exactly."""
    env = AtariEnv("Breakout")
    hp = compose_config("env=atari", "experiment=debug").policy.hparams
    policy, tracker = stopped_and_resumed(env, hp, 3 * 1024, stop_after=1, tmp=tmp_path)
    assert "cannot save its episodes in progress" in caplog.text
    assert [s for s, _ in tracker.history["train/sps"]] == [1024, 2048, 3072]
