from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import lightning as L
import numpy as np

from core.evaluation import pearson, rollout
from core.interfaces import Policy
from core.run import RunContext
from core.tracking import NullTracker
from plugins.envs.gym import GymEnv
from plugins.noise_ranking import NoisyPolicy, noise_ranking
from plugins.optimizers.bc import BehavioralCloning
from plugins.rewards.drex import DREX


class BalancingExpert(Policy):
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return (obs @ np.array([0.0, 0.0, 3.0, 1.0]) > 0).astype(np.int64)


def test_noise_level_sets_the_fraction_of_random_actions() -> None:
    obs = np.ones((4000, 4), np.float32)  # the expert always pushes right here
    for eps in (0.0, 0.5, 1.0):
        actions = NoisyPolicy(BalancingExpert(), gym.spaces.Discrete(2), eps, seed=0).act(obs)
        assert abs((actions == 0).mean() - eps / 2) < 0.03  # a random action is 0 half the time


def test_noise_ranking_orders_by_noise_and_agrees_with_true_returns(tmp_path: Path) -> None:
    L.seed_everything(0)
    env = GymEnv("CartPole-v1", "cartpole")
    demos = rollout(BalancingExpert(), env, 2, seed=0)
    tracker = NullTracker()
    prefs = noise_ranking(demos, env, RunContext(0, tmp_path, tracker, progress=False),
                          BehavioralCloning(epochs=5), [1.0, 0.6, 0.2], rollouts_per_level=4,
                          include_demonstrations=True)
    assert len(prefs.items) == 14 and prefs.demonstrations == demos
    noise = np.array([t.info.get("noise", -1.0) for t in prefs.items])  # demos: -1, better than any noise
    assert np.all(noise[prefs.pairs[:, 0]] < noise[prefs.pairs[:, 1]])
    assert tracker.last("preference/label_agreement") > 0.8
    assert tracker.last("bc/true_return_mean") > 200


def test_drex_learns_a_reward_that_tracks_the_true_return(tmp_path: Path) -> None:
    L.seed_everything(0)
    env = GymEnv("CartPole-v1", "cartpole")
    demos = rollout(BalancingExpert(), env, 2, seed=0)
    from core.types import Preferences

    tracker = NullTracker()
    model = DREX(cloner=BehavioralCloning(epochs=5), noise_levels=[1.0, 0.75, 0.5, 0.25], rollouts_per_level=4,
                 num_pairs=400, min_snippet_length=10, max_snippet_length=30, ensemble_size=2,
                 hidden_sizes=(32, 32), lr=1e-3, batch_size=8)
    model.fit(Preferences(demos, np.zeros((0, 2))), env, RunContext(0, tmp_path, tracker, progress=False))
    assert tracker.last("reward/val_pair_accuracy") > 0.8
    fresh = rollout(NoisyPolicy(BalancingExpert(), env.action_space, 0.7, seed=9), env, 12, seed=9)
    true = [t.true_return for t in fresh]
    assert pearson(np.array(true), np.array([model.learned_return(t) for t in fresh])) > 0.5
