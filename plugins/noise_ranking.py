"""Noise injection's automatic ranking (D-REX: Brown, Goo, Niekum, CoRL 2019, arXiv:1907.03976), shared by
reward=drex and preference=noise_injection.

A behavioral-cloning policy is rolled out with epsilon-greedy noise at several levels: each action
is, with probability epsilon, drawn uniformly from the action space. Rollouts are ranked by noise
level alone (less noise is better; rollouts at one level are tied), with the demonstrations above
every level. No true-reward label is used for the ranking.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from core.evaluation import rollout
from core.interfaces import Environment, EnvReward, Optimizer, Policy
from core.run import RunContext
from core.types import Preferences, Trajectory


class NoisyPolicy(Policy):
    """Epsilon-greedy around `policy`: each row's action is uniform over `space` with prob. epsilon."""

    def __init__(self, policy: Policy, space: gym.Space, epsilon: float, seed: int) -> None:
        self.policy, self.epsilon = policy, epsilon
        self.space = copy.deepcopy(space)
        self.space.seed(seed)
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        actions = self.policy.act(obs, deterministic)
        noisy = self.rng.random(len(obs)) < self.epsilon
        for i in np.flatnonzero(noisy):
            actions[i] = self.space.sample()
        return actions


def agreement_with_true_returns(prefs: Preferences) -> float:
    """Fraction of preference pairs whose order the true returns agree with (nan if unknown)."""
    returns = np.array([t.true_return for t in prefs.items])
    if len(prefs.pairs) == 0 or not np.isfinite(returns).all():
        return float("nan")
    return float(np.mean(returns[prefs.pairs[:, 0]] > returns[prefs.pairs[:, 1]]))


def noise_ranking(demos: list[Trajectory], env: Environment, run: RunContext, cloner: Optimizer,
                  noise_levels: Sequence[float], rollouts_per_level: int, include_demonstrations: bool,
                  bc_eval_episodes: int = 10) -> Preferences:
    """Clone `demos`, roll the clone out at every noise level, rank by noise (demos best).

    The clone's true return without noise (bc_eval_episodes episodes) is the ranking's baseline "bc", for
    comparison with the final policy; it is logged as bc/true_return_mean, with preference/label_agreement
    (how often the noise ranking agrees with the true returns).
    """
    bc = cloner.fit(env, EnvReward(), run.nested(), demonstrations=demos)
    bc_returns = [t.true_return for t in rollout(bc, env, bc_eval_episodes, seed=run.seed + 20_000)]
    run.log({"bc/true_return_mean": float(np.mean(bc_returns)), "bc/true_return_std": float(np.std(bc_returns))}, 0)
    items: list[Trajectory] = []
    scores: list[float] = []
    for k, eps in enumerate(tqdm(sorted(noise_levels), desc="noise injection", disable=not run.progress,
                                 leave=False)):
        noisy = NoisyPolicy(bc, env.action_space, float(eps), seed=run.seed + 3000 + k)
        for traj in rollout(noisy, env, rollouts_per_level, seed=run.seed + 3000 + k):
            traj.info["noise"] = float(eps)
            items.append(traj)
            scores.append(-float(eps))
    if include_demonstrations:
        items += demos
        scores += [1.0] * len(demos)  # above every noise level (epsilon >= 0)
    prefs = Preferences.from_ranking(items, np.array(scores))
    prefs.demonstrations = demos
    prefs.baselines = {"bc": float(np.mean(bc_returns))}
    agreement = agreement_with_true_returns(prefs)
    if np.isfinite(agreement):
        run.log({"preference/label_agreement": agreement}, 0)
    return prefs
