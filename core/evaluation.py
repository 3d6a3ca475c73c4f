"""Rolling out a policy and measuring it against the environment's true reward."""

from __future__ import annotations

import math

import numpy as np
from tqdm.auto import tqdm

from core.interfaces import Environment, Policy, RewardModel
from core.types import Trajectory


def rollout(policy: Policy, env: Environment, episodes: int, seed: int, deterministic: bool = False,
            max_envs: int = 16, desc: str | None = None, max_steps: int | None = None) -> list[Trajectory]:
    """Run `episodes` whole episodes and return them with their true rewards; info["terminated"]
    says whether each ended for real (False: cut by a time limit), info["cut"] whether max_steps cut it.

    Episodes run in up to `max_envs` parallel copies; each copy contributes the same number of
    consecutive episodes (its first ones), so short episodes are not over-represented.
    max_steps: cut an episode after this many steps (a time limit of the caller's, on top of the
    env's own; the copy is reset and goes on with its next episode). None: the env's limit only.
    """
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"evaluation.max_steps must be >= 1 (or null), got {max_steps}")
    num_envs = min(episodes, max_envs)
    per_env = math.ceil(episodes / num_envs)
    envs = env.make_vec(num_envs)
    obs, _ = envs.reset(seed=seed)
    obs_dtype = np.uint8 if env.observation_kind == "image" else np.float32
    buffers: list[tuple[list, list, list]] = [([], [], []) for _ in range(num_envs)]
    done: list[list[Trajectory]] = [[] for _ in range(num_envs)]
    cuts = 0
    bar = tqdm(total=num_envs * per_env, desc=desc, disable=desc is None, leave=False)
    while any(len(d) < per_env for d in done):
        actions = policy.act(obs, deterministic=deterministic)
        next_obs, rewards, terminated, truncated, _ = envs.step(actions)
        cut = np.zeros(num_envs, dtype=bool)
        for i in range(num_envs):
            o, a, r = buffers[i]
            o.append(obs[i])
            a.append(actions[i])
            r.append(rewards[i])
            if max_steps is not None and len(o) >= max_steps and not (terminated[i] or truncated[i]):
                cut[i] = truncated[i] = True
            if terminated[i] or truncated[i]:
                if len(done[i]) < per_env:
                    done[i].append(Trajectory(np.array(o, dtype=obs_dtype), np.array(a),
                                              np.array(r, dtype=np.float32),
                                              {"terminated": bool(terminated[i]), "cut": bool(cut[i])}))
                    bar.update(1)
                buffers[i] = ([], [], [])
        if cut.any():  # the env has not ended these episodes itself: start the copies' next ones
            cuts += 1
            fresh, _ = envs.reset(seed=seed + 100_003 * cuts, options={"reset_mask": cut})
            next_obs = np.where(cut.reshape(-1, *[1] * (np.ndim(next_obs) - 1)), fresh, next_obs)
        obs = next_obs
    bar.close()
    envs.close()
    return [traj for per in zip(*done, strict=True) for traj in per][:episodes]


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; nan when either side is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def true_order_accuracy(pairs: np.ndarray, learned: np.ndarray, true: np.ndarray) -> float:
    """How often a learned score orders pairs (P, 2) of items as their true scores do: over the pairs whose true
    scores differ (whatever the label said: labels may be noisy), the share where the learned scores (N,) order
    the two the same way, a learned tie counting half; nan where no pair's true scores differ."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    learned, true = np.asarray(learned, dtype=np.float64), np.asarray(true, dtype=np.float64)
    a, b = pairs[:, 0], pairs[:, 1]
    informative = np.isfinite(true[a]) & np.isfinite(true[b]) & (true[a] != true[b])
    if not informative.any():
        return float("nan")
    a, b = a[informative], b[informative]
    agree = np.where(learned[a] == learned[b], 0.5, ((learned[a] > learned[b]) == (true[a] > true[b])).astype(float))
    return float(agree.mean())


def returns(trajs: list[Trajectory], reward: RewardModel | None = None) -> np.ndarray:
    """True returns of trajectories, or learned ones if a reward model is given."""
    if reward is None:
        return np.array([t.true_return for t in trajs])
    return np.array([reward.learned_return(t) for t in trajs])
