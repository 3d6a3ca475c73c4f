from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest

from core.demo_files import save_demos
from core.run import RunContext
from core.tracking import NullTracker
from plugins.envs.gym import GymEnv
from plugins.optimizers.ppo import PPO
from plugins.preferences.learner_checkpoints import LearnerCheckpoints
from plugins.preferences.ranked_demos import RankedDemos

CARTPOLE_HP = {"num_envs": 8, "num_steps": 32, "learning_rate": 1e-3, "gamma": 0.98, "gae_lambda": 0.8,
               "num_minibatches": 1, "update_epochs": 20, "ent_coef": 0.0, "normalize_reward": False}


def test_learner_checkpoints_improve_and_stop_at_the_threshold(tmp_path: Path) -> None:
    L.seed_everything(0)
    source = LearnerCheckpoints(PPO(CARTPOLE_HP, total_timesteps=20_000), checkpoint_every=256,
                                stop_return=80, episodes_per_checkpoint=2)
    tracker = NullTracker()
    prefs = source.gather(GymEnv("CartPole-v1", "cartpole"), RunContext(0, tmp_path, tracker, progress=False))
    steps = np.array([t.info["checkpoint_steps"] for t in prefs.items])
    returns = np.array([t.true_return for t in prefs.items])
    last = steps == steps.max()
    assert returns[last].max() >= 80 and np.all(returns[~last] < 80)  # stopped at the first that reached it
    assert steps.max() < 20_000
    assert returns[last].mean() > returns[steps == steps.min()].mean()  # later checkpoints are better
    assert len(list((tmp_path / "checkpoints" / "learner").glob("*.pt"))) == len(np.unique(steps))
    for i, j in prefs.pairs:
        assert returns[i] > returns[j]
    assert "learner/true_return" in tracker.history and "train/true_return" not in tracker.history


def test_ranked_demos_rank_a_file_and_check_the_observation_shape(tmp_path: Path) -> None:
    from core.types import Trajectory

    trajs = [Trajectory(np.zeros((n, 4), np.float32), np.zeros(n), np.ones(n, np.float32)) for n in (5, 9, 7)]
    save_demos(tmp_path / "d.npz", trajs)
    prefs = RankedDemos(str(tmp_path / "d.npz")).gather(GymEnv("CartPole-v1", "cartpole"),
                                                         RunContext(0, tmp_path, NullTracker(), progress=False))
    assert sorted(map(tuple, prefs.pairs)) == [(1, 0), (1, 2), (2, 0)]
    with pytest.raises(ValueError, match=r"d.npz.*shape \(4,\).*env=pendulum"):
        RankedDemos(str(tmp_path / "d.npz")).gather(GymEnv("Pendulum-v1", "pendulum"),
                                                     RunContext(0, tmp_path, NullTracker(), progress=False))
