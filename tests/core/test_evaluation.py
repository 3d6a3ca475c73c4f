"""core.evaluation.rollout: whole episodes, and the caller's step cap (evaluation.max_steps)."""

from __future__ import annotations

import numpy as np

from core.evaluation import rollout
from core.interfaces import Policy
from plugins.envs.atari import AtariEnv
from plugins.envs.gym import GymEnv


class Balancer(Policy):
    """Balances CartPole for all 500 steps: push toward the pole's lean."""

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return (obs @ np.array([0.0, 0.0, 3.0, 1.0]) > 0).astype(np.int64)


class Noop(Policy):
    """Atari: never presses anything, so a game that waits for the player never ends by itself."""

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return np.zeros(len(obs), dtype=np.int64)


def test_max_steps_cuts_episodes_and_the_copies_go_on_with_fresh_ones() -> None:
    env = GymEnv("CartPole-v1", "cartpole")
    whole = rollout(Balancer(), env, 2, seed=0)
    assert [len(t) for t in whole] == [500, 500] and not any(t.info["terminated"] or t.info["cut"] for t in whole)
    cut = rollout(Balancer(), env, 6, seed=0, max_envs=2, max_steps=40)  # 3 episodes from each of 2 copies
    assert [len(t) for t in cut] == [40] * 6
    assert not any(t.info["terminated"] for t in cut) and all(t.info["cut"] for t in cut)
    assert not any(t.info["cut"] for t in rollout(Balancer(), env, 2, seed=0, max_steps=500))  # the env's own limit
    np.testing.assert_array_equal(cut[0].obs, whole[0].obs[:40])  # the first episodes are the same ones, cut
    starts = np.array([t.obs[0] for t in cut])
    assert np.abs(starts).max() < 0.05  # each later episode starts from a reset state (|x| <= 0.05), not mid-run
    assert len({tuple(s) for s in starts}) == 6  # with seeds of their own


def test_max_steps_ends_an_atari_game_that_waits_for_the_player() -> None:
    env = AtariEnv("Breakout")  # without FIRE after a lost ball the game waits up to 27,000 steps
    trajs = rollout(Noop(), env, 3, seed=0, max_envs=1, max_steps=300)
    assert [len(t) for t in trajs] == [300] * 3 and not any(t.info["terminated"] for t in trajs)
    assert all(t.obs.dtype == np.uint8 for t in trajs)


def test_true_order_accuracy_counts_pairs_of_different_truth_whatever_their_label() -> None:
    from core.evaluation import true_order_accuracy

    true = np.array([3.0, 1.0, 2.0, 2.0])
    learned = np.array([0.9, 0.1, 0.5, 0.5])
    # (0, 1) agrees; (1, 2) is labeled against the truth, learned agrees with the truth; (2, 3) ties in truth: left
    # out; (2, 0): learned 0.5 < 0.9 and true 2 < 3: agrees
    assert true_order_accuracy(np.array([[0, 1], [1, 2], [2, 3], [2, 0]]), learned, true) == 1.0
    assert true_order_accuracy(np.array([[0, 2]]), np.array([0.1, 0, 0.5, 0]), true) == 0.0
    assert true_order_accuracy(np.array([[2, 3]]), learned, true) != true_order_accuracy(np.array([[2, 3]]), learned,
                                                                                           true)  # nan: no truth
    assert true_order_accuracy(np.array([[0, 1]]), np.array([1.0, 1.0, 0, 0]), true) == 0.5  # a learned tie
