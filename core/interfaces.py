"""The four interfaces every plugin implements, plus the environment they act in.

Plugins implement these; the pipeline (core/pipeline.py, core/stages.py) only ever talks to them. Each
class declares `capabilities`, which core/compat.py checks before any work starts. The text track adds
three narrower interfaces the text plugins talk through: a prompt task (`PromptTask`), a language
policy (`LanguagePolicy`) and a text reward (`RewardModel.score`).
"""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
import torch

from core.types import Preferences, Trajectory

if TYPE_CHECKING:
    from core.run import RunContext


@dataclass(frozen=True)
class Capabilities:
    """What a plugin works with.

    observations: observation kinds it accepts ("vector", "image", "text").
    actions: action kinds it accepts ("discrete", "continuous", "token").
    needs_demonstrations: an Optimizer that learns from demonstrations (behavioral cloning).
    needs_preferences: a RewardModel trained from preferences (False for the true reward), or an Optimizer that
        learns from them directly, with no reward model (DPO): it is handed the preferences.
    provides_demonstrations: a PreferenceSource whose items are whole demonstration trajectories.
    queries_online: a PreferenceSource that adds preferences while the policy trains (its
        `online_callback`); it needs a RewardModel that `refits` and an Optimizer that `calls_back`.
    refits: a RewardModel whose `fit` may be called again with more preferences, continuing from
        what it has learned.
    calls_back: an Optimizer that calls its `callback` with the current policy after each rollout.
    uses_reward: an Optimizer that optimises a reward (PPO); behavioral cloning and supervised language-model
        training do not, so a run with them learns no reward and gathers preferences only for demonstrations.
    data_parallel: an Optimizer or RewardModel whose fit is plain supervised learning over a data set (reward
        nets, the text reward model, SFT, pretraining, behavioral cloning): with trainer=ddp|fsdp its stage
        trains on every device, one process each, its training data split between them (core/devices.py).
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
    uses_reward: bool = True
    data_parallel: bool = False
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

    def frames(self, obs: np.ndarray) -> np.ndarray | None:
        """RGB frames (T, H, W, 3) uint8 showing the states behind observations `obs` (T, *obs_shape), drawn
        by the renderer of make_render_env, for people comparing fragments (preference=human); None where the
        task cannot show a state from its observation alone (the default)."""
        return None

    def snapshot(self, envs: gym.vector.VectorEnv) -> Any | None:
        """What `restore` needs to continue `envs` (made by make_vec) exactly where they are, episodes
        in progress and random streams included, after the process restarts (a checkpoint); None where
        that cannot be saved (the episodes in progress are then lost on resume). Default: the vector
        env pickled whole, which holds every state of pure-Python environments."""
        try:
            return pickle.dumps(envs)
        except (TypeError, pickle.PicklingError, AttributeError):
            return None

    def restore(self, snapshot: Any) -> gym.vector.VectorEnv:
        """The vector env `snapshot` describes (made by `snapshot` of this task)."""
        return pickle.loads(snapshot)

    def signature(self) -> dict[str, Any]:
        """What a policy or reward learned on this task depends on, to refuse loading one into a task it
        does not fit: the name, observation and action kinds, and the spaces' shapes."""
        return {"env": self.name, "observations": self.observation_kind, "actions": self.action_kind,
                "observation_shape": list(self.observation_space.shape or ()),
                "action_space": str(self.action_space)}

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


TOKEN_PAD = -1
"""Padding of a PromptTask's observations (token ids are >= 0)."""


class GoldScorer(ABC):
    """A text task's true reward (its gold standard, which no learner, judge or reward model ever sees) and the
    held-out measures it reports.

    label: what the gold measures, for plot axes (e.g. "VADER compound").
    default_prompts: the task's bundled prompt file (env.prompts=null takes it).
    continuation: its prompts are text to continue (the review openings), put to a model as they are unless the
        user asks for the chat template (env.chat_template=true); otherwise requests to an assistant, put through
        the chat template unless env.chat_template=false.
    """

    label: str
    default_prompts: Path
    continuation: bool = False
    default_examples: Path | None = None
    """The few-shot template's worked examples for this task (env.examples=null takes them); None: it has none."""

    @abstractmethod
    def score(self, prompts: Sequence[str], responses: Sequence[str], kinds: Sequence[str | None]) -> np.ndarray:
        """prompts, responses, each prompt's kind (None where the file names none) (N,) -> gold rewards (N,)."""

    def metrics(self, responses: Sequence[str], kinds: Sequence[str | None], gold: np.ndarray) -> dict[str, float]:
        """Held-out measures beyond the mean gold reward, from the responses, their prompts' kinds and their gold
        rewards (`score`'s, already computed), named without the eval/ prefix (e.g. "harmlessness"); none by
        default."""
        return {}


class PromptTask(Environment):
    """Writing a response to a prompt as a token-level MDP (env=text): the state is the prompt and the
    tokens so far (observations: token ids right-padded with TOKEN_PAD), the action the next token of
    the language model `model`; an episode ends at its end-of-sequence token or after `max_new_tokens`.

    model: the language model whose tokens are the actions (a hub id, packaged model or local folder),
        the starting policy of text optimizers unless a recipe stage hands them another.
    train_prompts / eval_prompts: a fixed split; optimizers and samplers draw only training prompts,
        the final evaluation uses only held-out ones.
    prompt_kinds: each prompt's kind where the prompt file names one (e.g. "red_team" or "helpful" for
        Constitutional AI: which prompts are revised, which scored for harmlessness or for helpfulness).
    """

    model: str
    max_new_tokens: int
    train_prompts: list[str]
    eval_prompts: list[str]
    prompt_kinds: dict[str, str]

    @abstractmethod
    def gold(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """The task's true reward of whole responses (N,), the gold standard no learner sees."""

    @abstractmethod
    def present(self, prompts: Sequence[str]) -> list[str]:
        """The text a language model continues for each prompt (the task's template and chat format); every
        sampler and optimizer encodes this, while data, reward models and judges keep the prompt itself."""

    @abstractmethod
    def conversation(self, turns: Sequence[str]) -> str:
        """Turns alternating person, assistant, ..., ending with the person's -> the text a model continues for the
        assistant's reply, in the task's chat format (critique and revision requests, for instance)."""

    @abstractmethod
    def evaluate_text(self, policy: LanguagePolicy, reward: RewardModel, run: RunContext, episodes: int,
                      seed: int, tag: str) -> dict[str, float]:
        """Held-out evaluation of a language policy against its reference (eval/gold_reward_mean,
        eval/kl_to_ref, eval/win_rate_vs_ref, ...), with the samples written as samples/<tag>.jsonl."""


class Policy(ABC):
    """Acts. Control: a batch of observations (N, *obs_shape) -> actions (N, *action_shape).

    Actor-critic policies also expose a value estimate; the optimizer that trained a policy knows how;
    the rest of rexlab only calls `act` (and `save`, to keep the policy as an artifact).
    """

    @abstractmethod
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Sample (or, if deterministic, take the mode of) the action distribution for each row."""

    def save(self, path: Path) -> dict[str, Any]:
        """Write the policy as an artifact at `path` without its suffix (a control policy: path.pt; a
        language model: the folder `path`) and return the config node that loads it back: a `_target_`
        and its arguments, `path` relative to path's parent; core/artifacts.py instantiates it with the
        task's `observation_space` and `action_space` as keyword arguments."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")


class LanguagePolicy(Policy):
    """A language model acting in a PromptTask, with the reference policy it is measured against
    (the model it started from)."""

    @abstractmethod
    def sample(self, prompts: Sequence[str], seed: int, reference: bool = False) -> tuple[Any, list[str]]:
        """Responses to `prompts` (with a generator seeded by `seed`; the reference's with
        reference=True): a handle for `log_ratio` and the texts."""

    @abstractmethod
    def log_ratio(self, sampled: Any) -> np.ndarray:
        """For responses `sample` returned: the summed log pi - log pi_ref of each response's tokens (N,),
        a Monte Carlo sample of KL(pi || pi_ref) in nats per response."""

    @abstractmethod
    def response_lengths(self, sampled: Any) -> np.ndarray:
        """For responses `sample` returned: each one's length in tokens, its end-of-sequence token included (N,)."""


class RewardModel(ABC):
    """Scores. Control: per-state reward r(s); a trajectory's or snippet's learned return is the sum
    of r over its observations.

    A RewardModel with capabilities.needs_preferences is trained by `fit`; the true-reward baseline is
    not, and `uses_env_reward` tells optimizers to take the environment's own reward instead.
    """

    capabilities: ClassVar[Capabilities]
    uses_env_reward: ClassVar[bool] = False
    baselines: dict[str, float]
    """True returns of baseline policies trained on the way (D-REX's behavioural clone: {"bc": ...}), for
    the evaluation's eval/beats_<name>. Set by `fit`; empty where there are none."""

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

    def load_state_dict(self, state: dict) -> None:  # noqa: B027 (nothing to restore unless learned)
        """Restore what `state_dict` returned (the model is built from the same config)."""

    def save(self, folder: Path) -> None:
        """Write the learned model into `folder` (an artifact a later stage or run loads with `load`);
        default: state_dict() as folder/reward.pt, replaced whole (an online refit overwrites it)."""
        from core.artifacts import replace_atomically  # (artifacts builds on these interfaces)

        state = self.state_dict()
        replace_atomically(folder / "reward.pt", lambda path: torch.save(state, path))

    def load(self, folder: Path) -> None:
        """Restore a model `save` wrote into `folder`, in an instance built from the same config."""
        self.load_state_dict(torch.load(folder / "reward.pt", weights_only=False, map_location="cpu"))

    def to(self, device: torch.device | str) -> RewardModel:
        """Put the network that scores (if any) on `device` (an optimizer's, while it trains against this
        reward); `reward` and `score` still take and return NumPy. Default: nothing to move."""
        return self


@runtime_checkable
class EnsembleReward(Protocol):
    """A RewardModel made of members whose predictions can be asked for one by one (for query
    selection by ensemble disagreement)."""

    def member_returns(self, trajs: list[Trajectory]) -> np.ndarray:
        """Each member's learned return of each trajectory, (M, N); their mean over members is the
        model's `learned_return`, and sigmoid(R[m, i] - R[m, j]) member m's P(i preferred to j)."""
        ...


class IterationCallback(ABC):
    """Called by an optimizer after each rollout with (policy, env steps so far, recent mean true
    return); returning True stops the optimisation. An optimizer with rollouts (PPO) also hands them to
    `experience` where the callback wants them. Callbacks with state (the demonstrations collected
    so far, the preferences asked so far) give it to the optimizer's checkpoints through
    state_dict/load_state_dict, so a resumed run continues with it."""

    wants_experience: bool = False  # whether the optimizer hands it each rollout (`experience`; costs a copy)

    @abstractmethod
    def __call__(self, policy: Policy, env_steps: int, recent_return: float) -> bool:
        """React to the current policy; True stops the optimisation."""

    def experience(self, trajectories: list[Trajectory]) -> None:  # noqa: B027 (most callbacks want none)
        """Where `wants_experience`: the rollout the optimizer just trained on, before `__call__`, each
        environment's steps split at episode ends. info["terminated"] says whether a piece ended for real;
        one cut by a time limit or by the end of the rollout has it False."""

    def waits(self, env_steps: int) -> bool:
        """Whether a call at `env_steps` would wait for something outside the run (people labeling on the
        labeling page). The optimizer then checkpoints before that call, so a run stopped while it waits
        resumes right before it, and the call asks the same again. Default: never."""
        return False

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold to continue this callback after a restart."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (stateless callbacks restore nothing)
        """Restore what `state_dict` returned."""


@dataclass(frozen=True)
class SavedPolicy:
    """A policy saved as an artifact: `path` without suffix (a control policy: path.pt with its config
    path.yaml; a language model: the save_pretrained folder `path`, its config path/rexlab.yaml).
    Optimizers start from it (`init`); core/artifacts.py loads it."""

    path: Path

    @property
    def model(self) -> str:
        """A language model's folder, as a name `from_pretrained` takes."""
        return str(self.path)


class PreferenceSource(ABC):
    """Produces preferences: ranked demonstrations, learner checkpoints, noise injection, ..."""

    capabilities: ClassVar[Capabilities]

    @abstractmethod
    def gather(self, env: Environment, run: RunContext, policy: SavedPolicy | None = None) -> Preferences:
        """Collect items (trajectories or responses) and the preferences between them. `policy`: the
        current policy where an earlier stage of the recipe made one (text: the model whose responses
        are compared, e.g. the SFT model); None: the task's starting model."""

    def state_dict(self) -> dict[str, Any]:
        """What the source keeps between `gather` and its online callback (an online labeler's random stream
        and calibrated noise), saved with the preferences so that a resumed run goes on with it."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (sources without state restore nothing)
        """Restore what `state_dict` returned."""

    def online_callback(self, prefs: Preferences, reward: RewardModel, env: Environment,
                        run: RunContext) -> IterationCallback | None:
        """For sources with capabilities.queries_online: once `reward` has learned from `prefs`
        (what `gather` returned), the callback the optimizer calls after each rollout; it appends
        preferences over the current policy's behaviour to `prefs` and refits `reward`. None (the
        default): every preference was gathered up front."""
        return None


@dataclass
class Judgements:
    """A judge's verdicts on N comparisons of two responses to a prompt.

    probability: (N,) P(the first response is the better), the soft label (both orders asked and averaged where
        the judge is a language model, which cancels its preference for a slot).
    first_slot: (N,) the judge's mean probability of the first-listed option whatever the content (0.5: no position
        bias; NaN where the judge has no slots), for preference/position_bias.
    rationales: the reasoning generated before each verdict (chain of thought), None where none was.
    """

    probability: np.ndarray
    first_slot: np.ndarray
    rationales: list[str | None]


class Judge(ABC):
    """Compares two responses to a prompt under a question (a constitution principle's comparison question):
    AI feedback's labeler (Bai et al. 2022). Local language-model judges score the option tokens of a
    multiple-choice prompt, both orders asked."""

    @abstractmethod
    def judge(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
              questions: Sequence[str]) -> Judgements:
        """prompts, first, second, questions (N,) -> the judgements of the N comparisons."""


class Optimizer(ABC):
    """Improves a Policy against a reward or directly from preferences: PPO, GRPO, DPO, behavioral cloning, ..."""

    capabilities: ClassVar[Capabilities]

    @abstractmethod
    def fit(
        self,
        env: Environment,
        reward: RewardModel,
        run: RunContext,
        demonstrations: list[Trajectory] | None = None,
        callback: IterationCallback | None = None,
        init: SavedPolicy | None = None,
        preferences: Preferences | None = None,
    ) -> Policy:
        """Train and return the final policy. `reward.uses_env_reward` selects the true reward;
        `demonstrations` (best first) are given to optimizers that declare needs_demonstrations, `preferences`
        to those that declare needs_preferences (and then `reward` is unused);
        `init`: the policy to start from (an earlier stage's, or policy.init); None: a fresh one
        (text: the task's model). Text optimizers measure their KL against where they started."""


class EnvReward(RewardModel):
    """reward=true: the environment's own reward, the upper-bound baseline. Nothing is learned and
    no preferences are gathered; optimizers read the reward the environment returns."""

    capabilities = Capabilities(needs_preferences=False)
    uses_env_reward = True

    def __init__(self) -> None:
        self.baselines = {}

    def fit(self, prefs: Preferences, env: Environment, run: RunContext) -> None:
        raise RuntimeError("reward=true learns nothing; the pipeline never calls fit on it")

    def reward(self, obs: np.ndarray) -> np.ndarray:
        raise RuntimeError("reward=true has no model of the reward; use the environment's reward")
