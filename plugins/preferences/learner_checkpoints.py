"""preference=learner_checkpoints: the T-REX setup. A learner (PPO on the true reward) trains and
saves checkpoints; rollouts of those checkpoints are the demonstrations, ranked by true return.
Each checkpoint is rolled out as soon as it is saved, and the learner stops once one of its
demonstrations reaches `stop_return`, so the demonstrations stay suboptimal."""

from __future__ import annotations

import numpy as np
import torch

from core.evaluation import rollout
from core.interfaces import Capabilities, Environment, EnvReward, Optimizer, Policy, PreferenceSource
from core.run import RunContext
from core.types import Preferences, Trajectory


class LearnerCheckpoints(PreferenceSource):
    """learner: the Optimizer that trains on the true reward (configured as PPO).
    checkpoint_every: env steps between checkpoints. stop_return: stop the learner once a
    checkpoint's demonstration reaches this true return (None: run its whole budget).
    episodes_per_checkpoint: demos per checkpoint. deterministic: roll checkpoints out with their
    action mode instead of sampling."""

    capabilities = Capabilities(observations=frozenset({"vector", "image"}), provides_demonstrations=True,
                                requires=(("learner", "calls_back", "policy"),))

    def __init__(self, learner: Optimizer, checkpoint_every: int, stop_return: float | None = None,
                 episodes_per_checkpoint: int = 1, deterministic: bool = False) -> None:
        self.learner, self.checkpoint_every, self.stop_return = learner, checkpoint_every, stop_return
        self.episodes_per_checkpoint, self.deterministic = episodes_per_checkpoint, deterministic

    def gather(self, env: Environment, run: RunContext) -> Preferences:
        demos: list[Trajectory] = []
        checkpoints = 0
        folder = run.output_dir / "checkpoints" / "learner"
        folder.mkdir(parents=True, exist_ok=True)

        def on_iteration(policy: Policy, env_steps: int, recent_return: float) -> bool:
            nonlocal checkpoints
            if env_steps < (checkpoints + 1) * self.checkpoint_every:
                return False
            checkpoints += 1
            if isinstance(policy, torch.nn.Module):
                torch.save(policy.state_dict(), folder / f"steps_{env_steps:08d}.pt")
            new = rollout(policy, env, self.episodes_per_checkpoint, seed=run.seed + 1000 + checkpoints,
                          deterministic=self.deterministic)
            for traj in new:
                traj.info["checkpoint_steps"] = env_steps
            demos.extend(new)
            best = max(t.true_return for t in new)
            run.log({"learner/checkpoint_return": best}, env_steps)
            return self.stop_return is not None and best >= self.stop_return

        self.learner.fit(env, EnvReward(), run.scoped(train="learner"), callback=on_iteration)
        if not demos:
            raise RuntimeError(f"preference: the learner stopped before its first checkpoint "
                               f"(checkpoint_every={self.checkpoint_every} env steps); lower it")
        return Preferences.from_ranking(demos, np.array([t.true_return for t in demos]))
