from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import lightning as L
import numpy as np
import pytest
import torch

from core.evaluation import rollout
from core.interfaces import EnvReward, Policy
from core.run import RunContext
from core.tracking import NullTracker
from plugins.envs.gym import GymEnv
from plugins.optimizers.bc import BehavioralCloning


class BalancingExpert(Policy):
    """A linear CartPole controller that balances for all 500 steps: push toward the pole's lean."""

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return (obs @ np.array([0.0, 0.0, 3.0, 1.0]) > 0).astype(np.int64)


class Mover(Policy):
    """Pendulum 'expert' whose torque is a fixed linear function of the observation."""

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return np.clip(obs @ np.array([[-1.0], [0.5], [-0.3]]), -2.0, 2.0).astype(np.float32)


def test_bc_clones_a_balancing_expert(tmp_path: Path) -> None:
    L.seed_everything(0)
    env = GymEnv("CartPole-v1", "cartpole")
    demos = rollout(BalancingExpert(), env, 4, seed=0)
    assert all(t.true_return == 500 for t in demos)
    tracker = NullTracker()
    policy = BehavioralCloning(epochs=5).fit(env, EnvReward(), RunContext(0, tmp_path, tracker, progress=False),
                                             demos)
    returns = [t.true_return for t in rollout(policy, env, 10, seed=1)]
    assert np.mean(returns) > 400, returns
    assert tracker.history["bc/val_accuracy"][-1][1] > 0.9


def test_bc_fits_continuous_actions(tmp_path: Path) -> None:
    L.seed_everything(0)
    env = GymEnv("Pendulum-v1", "pendulum")
    demos = rollout(Mover(), env, 4, seed=0)
    tracker = NullTracker()
    policy = BehavioralCloning(epochs=20, lr=3e-3).fit(env, EnvReward(),
                                                       RunContext(0, tmp_path, tracker, progress=False), demos)
    obs = np.concatenate([t.obs for t in demos])
    predicted = policy.act(obs, deterministic=True)
    expert = Mover().act(obs)
    assert np.mean(np.abs(predicted - expert)) < 0.15
    losses = [v for _, v in tracker.history["bc/train_loss"]]
    assert losses[-1] < losses[0]
    assert isinstance(policy, torch.nn.Module) and isinstance(env.action_space, gym.spaces.Box)


class PushLeft(Policy):
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return np.zeros(len(obs), dtype=np.int64)


def test_bc_keeps_the_best_fraction(tmp_path: Path) -> None:
    env = GymEnv("CartPole-v1", "cartpole")
    best_first = rollout(BalancingExpert(), env, 2, seed=0) + rollout(PushLeft(), env, 2, seed=0)
    policy = BehavioralCloning(epochs=1, top_fraction=0.5).fit(
        env, EnvReward(), RunContext(0, tmp_path, NullTracker(), progress=False), best_first)
    assert policy.obs_rms.count.item() == pytest.approx(1000, abs=0.01)  # the expert's 2 x 500 steps only
