"""The four interfaces every plugin implements, plus the environment they act in.

Plugins implement these; the pipeline (core/pipeline.py) only ever talks to them. Each class declares
`capabilities`, which core/compat.py checks before any work starts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from core.types import Preferences, Trajectory

if TYPE_CHECKING:
    from core.run import RunContext


@dataclass(frozen=True)
class Capabilities:
    """What a plugin works with.

    observations: observation kinds it accepts ("vector", "image", "text").
    actions: action kinds it accepts ("discrete", "continuous", "token").
    needs_demonstrations: an Optimizer that learns from demonstrations (behavioral cloning).
    needs_preferences: a RewardModel trained from preferences (False for the true reward).
    provides_demonstrations: a PreferenceSource whose items are whole demonstration trajectories.
    queries_online: a PreferenceSource that adds preferences while the policy trains (its
        `online_callback`); it needs a RewardModel that `refits` and an Optimizer that `calls_back`.
    refits: a RewardModel whose `fit` may be called again with more preferences, continuing from
        what it has learned.
    calls_back: an Optimizer that calls its `callback` with the current policy after each rollout.
    requires: (config key, flag, config group) triples: the plugin nested under that key of this one's
        config must have that flag set, as the group's options that have it do (e.g. a checkpointing
        source's ("learner", "calls_back", "policy")); checked, with the nested plugins' observations
        and actions, before anything runs.
    notes: said when the plugin is refused (e.g. the combination that does what was meant).
    """

    observations: frozenset[str] = frozenset({"vector", "image", "text"})
    actions: frozenset[str] = frozenset({"discrete", "continuous", "token"})
    needs_demonstrations: bool = False
    needs_preferences: bool = False
    provides_demonstrations: bool = False
    queries_online: bool = False
    refits: bool = False
    calls_back: bool = False
    requires: tuple[tuple[str, str, str], ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)


class Environment(ABC):
    """A task: makes (vectorised) gymnasium environments and says what they observe and do.

    observation_kind: "vector" (Box of shape (D,)), "image" (Box (C, H, W) uint8) or "text".
    action_kind: "discrete" (Discrete(A)), "continuous" (Box (A,)) or "token".
    """

    name: str
    observation_kind: str
    action_kind: str
    reward_input_mask: np.ndarray | None = None
    """Image tasks: a boolean mask over one frame (H, W), True where a learned reward must not look
    (the score and lives, which would give the true reward away; T-REX, Brown et al. 2019)."""

    @abstractmethod
    def make_vec(self, num_envs: int) -> gym.vector.VectorEnv:
        """`num_envs` copies autoresetting in SAME_STEP mode (the final observation of an episode
        is in infos["final_obs"]). Callers seed them with `envs.reset(seed=seed)`."""

    def make_render_env(self) -> gym.Env | None:
        """One copy that renders RGB frames (render_mode="rgb_array") and observes exactly what
        make_vec's copies observe, for videos of a policy; None where the task cannot render."""
        return None

    def evaluate(self, policy: Policy, reward: RewardModel, run: RunContext, episodes: int,
                 seed: int) -> dict[str, float] | None:
        """The final evaluation of tasks not measured by episodes of true return alone (text: gold
        reward of sampled responses, KL to the reference policy, win rate against it): their eval/*
        metrics, with any artifacts written under run.output_dir. None (the default): the pipeline
        rolls out `episodes` episodes on the true reward."""
        return None

    @property
    @abstractmethod
    def observation_space(self) -> gym.Space:
        """The single-environment observation space."""

    @property
    @abstractmethod
    def action_space(self) -> gym.Space:
        """The single-environment action space."""


class Policy(ABC):
    """Acts. Control: a batch of observations (N, *obs_shape) -> actions (N, *action_shape).

    Actor-critic policies also expose a value estimate; the optimizer that trained a policy knows how;
    the rest of rexlab only calls `act`.
    """

    @abstractmethod
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Sample (or, if deterministic, take the mode of) the action distribution for each row."""


class RewardModel(ABC):
    """Scores. Control: per-state reward r(s); a trajectory's or snippet's learned return is the sum
    of r over its observations.

    A RewardModel with capabilities.needs_preferences is trained by `fit`; the true-reward baseline is
    not, and `uses_env_reward` tells optimizers to take the environment's own reward instead.
    """

    capabilities: ClassVar[Capabilities]
    uses_env_reward: ClassVar[bool] = False

    @abstractmethod
    def fit(self, prefs: Preferences, env: Environment, run: RunContext) -> None:
        """Learn from preferences over trajectories or responses (pairs (i, j): item i preferred).
        `env` is the task, for learners that roll out policies of their own (D-REX)."""

    @abstractmethod
    def reward(self, obs: np.ndarray) -> np.ndarray:
        """obs (N, *obs_shape) -> learned reward (N,) float32, on the scale optimizers should use."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Text: prompts, responses (N,) -> the learned reward of each whole response (N,) float32.
        Reward models of text implement it; the others refuse."""
        raise NotImplementedError(f"{type(self).__name__} scores observations, not text")

    def learned_return(self, traj: Trajectory) -> float:
        """Sum of the learned reward over a trajectory's observations."""
        return float(np.sum(self.reward(traj.obs)))

    def state_dict(self) -> dict:
        """What a checkpoint of this model holds (empty when nothing is learned)."""
        return {}


@runtime_checkable
class EnsembleReward(Protocol):
    """A RewardModel made of members whose predictions can be asked for one by one (for query
    selection by ensemble disagreement)."""

    def member_returns(self, trajs: list[Trajectory]) -> np.ndarray:
        """Each member's learned return of each trajectory, (M, N); their mean over members is the
        model's `learned_return`, and sigmoid(R[m, i] - R[m, j]) member m's P(i preferred to j)."""
        ...


IterationCallback = Callable[[Policy, int, float], bool]
"""Called after each rollout with (policy, env steps so far, recent mean true return); returning
True stops the optimisation."""


class PreferenceSource(ABC):
    """Produces preferences: ranked demonstrations, learner checkpoints, noise injection, ..."""

    capabilities: ClassVar[Capabilities]

    @abstractmethod
    def gather(self, env: Environment, run: RunContext) -> Preferences:
        """Collect items (trajectories) and the preferences between them."""

    def online_callback(self, prefs: Preferences, reward: RewardModel, env: Environment,
                        run: RunContext) -> IterationCallback | None:
        """For sources with capabilities.queries_online: once `reward` has learned from `prefs`
        (what `gather` returned), the callback the optimizer calls after each rollout; it appends
        preferences over the current policy's behaviour to `prefs` and refits `reward`. None (the
        default): every preference was gathered up front."""
        return None


class Optimizer(ABC):
    """Improves a Policy against a reward: PPO, behavioral cloning, pretraining, ..."""

    capabilities: ClassVar[Capabilities]

    @abstractmethod
    def fit(
        self,
        env: Environment,
        reward: RewardModel,
        run: RunContext,
        demonstrations: list[Trajectory] | None = None,
        callback: IterationCallback | None = None,
    ) -> Policy:
        """Train and return the final policy. `reward.uses_env_reward` selects the true reward;
        `demonstrations` (best first) are given to optimizers that declare needs_demonstrations."""


class EnvReward(RewardModel):
    """reward=true: the environment's own reward, the upper-bound baseline. Nothing is learned and
    no preferences are gathered; optimizers read the reward the environment returns."""

    capabilities = Capabilities(needs_preferences=False)
    uses_env_reward = True

    def fit(self, prefs: Preferences, env: Environment, run: RunContext) -> None:
        raise RuntimeError("reward=true learns nothing; the pipeline never calls fit on it")

    def reward(self, obs: np.ndarray) -> np.ndarray:
        raise RuntimeError("reward=true has no model of the reward; use the environment's reward")
