"""preference=learner_checkpoints: the T-REX setup. A learner (PPO on the true reward) trains and
saves checkpoints; rollouts of those checkpoints are the demonstrations, ranked by true return.
Each checkpoint is rolled out as soon as it is saved, and the learner stops once one of its
demonstrations reaches `stop_return`, so the demonstrations stay suboptimal. The checkpoints are kept
as policy artifacts under checkpoints/learner/ (policy.init=.../checkpoints/learner/steps_00020480
starts a run from one)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from core.artifacts import save_policy
from core.evaluation import rollout
from core.interfaces import (
    Capabilities,
    Environment,
    EnvReward,
    IterationCallback,
    Optimizer,
    Policy,
    PreferenceSource,
    SavedPolicy,
)
from core.run import RunContext
from core.schema import PositiveInt
from core.types import Preferences, Trajectory

log = logging.getLogger(__name__)


class Demonstrator(IterationCallback):
    """The learner's callback: every `every` env steps, save the policy into `folder`, roll it out and
    keep the rollouts; stop once one reaches `stop_return`."""

    def __init__(self, source: LearnerCheckpoints, env: Environment, run: RunContext, folder: Path) -> None:
        self.source, self.env, self.run, self.folder = source, env, run, folder
        self.demos: list[Trajectory] = []
        self.checkpoints = 0

    def state_dict(self) -> dict[str, Any]:
        return {"demos": self.demos, "checkpoints": self.checkpoints}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.demos, self.checkpoints = list(state["demos"]), int(state["checkpoints"])

    def __call__(self, policy: Policy, env_steps: int, recent_return: float) -> bool:
        source = self.source
        if env_steps < (self.checkpoints + 1) * source.checkpoint_every:
            return False
        self.checkpoints += 1
        save_policy(policy, self.folder / f"steps_{env_steps:08d}", self.env)
        new = rollout(policy, self.env, source.episodes_per_checkpoint, seed=self.run.seed + 1000 + self.checkpoints,
                      deterministic=source.deterministic)
        for traj in new:
            traj.info["checkpoint_steps"] = env_steps
        self.demos.extend(new)
        best = max(t.true_return for t in new)
        self.run.log({"learner/checkpoint_return": best}, env_steps)
        if source.stop_return is not None and best >= source.stop_return:
            log.info("the demonstrator's learner stops early at %d env steps: a demonstration's true return (%.1f) "
                     "reached preference.stop_return=%s, so the demonstrations stay suboptimal", env_steps, best,
                     source.stop_return)
            return True
        return False


class LearnerCheckpoints(PreferenceSource):
    """learner: the Optimizer that trains on the true reward (configured as PPO).
    checkpoint_every: env steps between checkpoints. stop_return: stop the learner once a
    checkpoint's demonstration reaches this true return (None: run its whole budget).
    episodes_per_checkpoint: demos per checkpoint. deterministic: roll checkpoints out with their
    action mode instead of sampling."""

    capabilities = Capabilities(observations=frozenset({"vector", "image"}), provides_demonstrations=True,
                                requires=(("learner", "calls_back", "policy"),))

    def __init__(self, learner: Optimizer, checkpoint_every: PositiveInt, stop_return: float | None = None,
                 episodes_per_checkpoint: PositiveInt = 1, deterministic: bool = False) -> None:
        self.learner, self.checkpoint_every, self.stop_return = learner, checkpoint_every, stop_return
        self.episodes_per_checkpoint, self.deterministic = episodes_per_checkpoint, deterministic

    def gather(self, env: Environment, run: RunContext, policy: SavedPolicy | None = None) -> Preferences:
        demonstrator = Demonstrator(self, env, run, run.output_dir / "checkpoints" / "learner")
        self.learner.fit(env, EnvReward(), run.scoped(train="learner"), callback=demonstrator)
        if not demonstrator.demos:
            raise RuntimeError(f"preference: the learner stopped before its first checkpoint "
                               f"(checkpoint_every={self.checkpoint_every} env steps); lower it")
        demos = demonstrator.demos
        return Preferences.from_ranking(demos, np.array([t.true_return for t in demos]))
