"""PPO throughput on CartPole-v1 with 8 environments, next to its upper bound: random actions through
the same vectorised environments (no policy, no learning). Prints env steps/s and the ratio.

    .venv/bin/python bench/ppo_throughput.py [--steps 50000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402

from core.interfaces import EnvReward  # noqa: E402
from core.run import RunContext  # noqa: E402
from core.tracking import NullTracker  # noqa: E402
from plugins.envs.gym import GymEnv  # noqa: E402
from plugins.optimizers.ppo import PPO  # noqa: E402

NUM_ENVS = 8


def random_rollout(env: GymEnv, steps: int) -> float:
    envs = env.make_vec(NUM_ENVS)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(steps // NUM_ENVS):
        envs.step(rng.integers(0, 2, NUM_ENVS))
    return steps / (time.perf_counter() - start)


def ppo(env: GymEnv, steps: int, tmp: Path) -> tuple[float, float]:
    """(training env steps/s including updates, rollout-only env steps/s)."""
    L.seed_everything(0, verbose=False)
    tracker = NullTracker()
    hp = {"num_envs": NUM_ENVS, "num_steps": 32, "num_minibatches": 1, "update_epochs": 20,
          "learning_rate": 1e-3, "gamma": 0.98, "gae_lambda": 0.8, "ent_coef": 0.0, "normalize_reward": False}
    start = time.perf_counter()
    PPO(hp, total_timesteps=steps).fit(env, EnvReward(), RunContext(0, tmp, tracker, progress=False))
    total = time.perf_counter() - start
    rollout = float(np.median([v for _, v in tracker.history["train/rollout_sps"]]))
    return steps / total, rollout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=50_000)
    args = parser.parse_args()
    env = GymEnv("CartPole-v1", "cartpole")
    bound = random_rollout(env, args.steps)
    train_sps, rollout_sps = ppo(env, args.steps, Path("/tmp/rexlab-bench"))
    print(f"CartPole-v1, {NUM_ENVS} sync envs, {args.steps} env steps")
    print(f"{'random actions (upper bound)':<42}{bound:>10.0f} steps/s")
    print(f"{'PPO rollout (policy forward + env step)':<42}{rollout_sps:>10.0f} steps/s   "
          f"ratio {rollout_sps / bound:.3f}")
    print(f"{'PPO training (rollouts + 20 epochs/iter)':<42}{train_sps:>10.0f} steps/s   "
          f"ratio {train_sps / bound:.3f}")


if __name__ == "__main__":
    main()
