"""preference=online: online preference learning (Christiano, Leike, Brown, Martic, Legg, Amodei,
NeurIPS 2017, "Deep reinforcement learning from human preferences", arXiv:1706.03741).

The policy trains on the learned reward while a (simulated) labeler is asked, on a schedule, to
compare pairs of fragments of the current policy's behaviour; each batch of answers refits the
reward model, which the policy goes on optimising. With reward=trex (an ensemble of nets trained
with the Bradley-Terry loss over summed rewards of fragment pairs; snippets cut to the fragments)
this is the paper's method:

1. Before RL, `initial_fraction` of the `num_queries` labels (paper, MuJoCo: 25%) compare
   fragments of rollouts of an untrained policy; here a uniformly random one, which is what a
   freshly initialised discrete policy nearly is. `gather` returns them; the pipeline fits the reward.
2. While the policy trains (`online_callback`, called by the optimizer after each rollout), the
   remaining labels arrive in `rounds` rounds evenly spaced over `horizon` env steps, at a rate
   proportional to c / (T + c) after T steps (c = `label_decay_steps`; paper: 2e6 MuJoCo, 5e6
   Atari), so the budget is spent by the last round. Each round rolls out the current policy,
   cuts fragment pairs, labels them and refits the reward.
3. Query selection (`selection=disagreement`, the paper's default): `candidates_per_query` times
   more candidate pairs than are asked (paper: 10); the asked ones are those whose predicted
   preference sigmoid(R_m(a) - R_m(b)) varies most across the reward's ensemble members. (On
   CartPole that favours pairs of equal true return, where the members have nothing to agree on:
   see the README for the measured cost; the paper found it hurting on some tasks too.)
4. The labeler is synthetic.py's (core/labels.py): Boltzmann-rational or flipping, calibrated once (on the first
   batch) to agree with the true order at `agreement`; 1.0 is the paper's exact synthetic oracle.
   Fragments of equal true return get a fair coin, in expectation the paper's "equally good".

Fragments are windows of `fragment_length` steps (paper: 25 on Atari, 1.5 s = 15-60 steps on
MuJoCo) starting at a uniformly drawn step; a window never crosses a time limit, and one that runs
into a real episode end is cut there. rexlab departs from the paper here: it keeps the environment's
episode ends, where the paper removed them (replacing them with a penalty the agent had to learn);
a cut fragment earns no reward after the end, which is that penalty in the labeler's eyes. Also
rexlab's, not the paper's: labels arrive in rounds with a refit each (the paper trains the reward
asynchronously, continuously). As in the paper, the queried fragments come from the policy's own recent
experience: the optimizer's latest rollouts (PPO hands them over), the last ones holding enough steps for
the round. Only where they are too few (the labels before RL, which a random policy's rollouts answer, or
a round larger than the rollouts) are rollouts made for the queries; their env steps are not in the
optimizer's budget and are counted in preference/extra_env_steps.
"""

from __future__ import annotations

import copy
import math
from typing import Annotated, Any, Literal

import gymnasium as gym
import numpy as np

from core.evaluation import rollout
from core.interfaces import (
    Capabilities,
    EnsembleReward,
    Environment,
    IterationCallback,
    Policy,
    PreferenceSource,
    RewardModel,
    SavedPolicy,
)
from core.labels import annotator_factors, annotator_scales, calibrate, label
from core.run import RunContext
from core.schema import NonNegative, NonNegativeInt, Positive, PositiveInt, Range
from core.types import Preferences, Trajectory, cut_fragments
from plugins.labeling.queries import clip_queries, distinct_pairs, preference_pairs
from plugins.labeling.server import WebLabeler


class UniformPolicy(Policy):
    """Uniformly random actions from `space` (seeded): the untrained policy of the first labels."""

    def __init__(self, space: gym.Space, seed: int) -> None:
        self.space = copy.deepcopy(space)
        self.space.seed(seed)

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return np.stack([self.space.sample() for _ in range(len(obs))])


def label_schedule(budget: int, rounds: int, horizon: int, decay_steps: float) -> tuple[np.ndarray, np.ndarray]:
    """When the online labels are asked and how many: rounds at env steps k * horizon / (rounds + 1)
    (k = 1..rounds), each taking the labels that a rate proportional to c / (T + c) (c =
    decay_steps) brings since the previous round, scaled so the rounds' labels sum to `budget`.
    Returns (steps (R,), labels (R,))."""
    steps = np.arange(1, rounds + 1) * horizon / (rounds + 1)
    cumulative = np.log1p(steps / decay_steps) / np.log1p(steps[-1] / decay_steps) if rounds else steps
    due = np.round(budget * np.asarray(cumulative)).astype(np.int64)
    return steps.astype(np.int64), np.diff(due, prepend=0)


def preference_variance(member_returns: np.ndarray) -> np.ndarray:
    """member_returns (M, 2C), pairs as consecutive columns -> the variance across members of
    each member's predicted P(first preferred) = sigmoid(R_first - R_second), (C,)."""
    diff = member_returns[:, 0::2] - member_returns[:, 1::2]
    return (1.0 / (1.0 + np.exp(-np.clip(diff, -50.0, 50.0)))).var(0)


class OnlinePreferences(PreferenceSource):
    """Fields documented in conf/preference/online.yaml."""

    capabilities = Capabilities(observations=frozenset({"vector", "image"}), queries_online=True)

    def __init__(self, horizon: PositiveInt, num_queries: Annotated[int, Range(ge=2)] = 700,
                 initial_fraction: Annotated[float, Range(gt=0, le=1)] = 0.25, fragment_length: PositiveInt = 25,
                 rounds: NonNegativeInt = 10, label_decay_steps: Positive = 2e6,
                 selection: Literal["disagreement", "uniform"] = "disagreement",
                 candidates_per_query: PositiveInt = 10, agreement: Annotated[float, Range(gt=0.5, le=1)] = 1.0,
                 noise: Literal["boltzmann", "flip"] = "boltzmann", annotators: PositiveInt = 1,
                 annotator_spread: NonNegative = 0.5, labeler: Literal["synthetic", "human"] = "synthetic",
                 web: WebLabeler | None = None, fps: PositiveInt = 20) -> None:
        self.num_queries, self.initial = num_queries, max(1, int(round(num_queries * initial_fraction)))
        if rounds == 0:
            self.initial = num_queries
        self.fragment_length, self.selection, self.candidates = fragment_length, selection, candidates_per_query
        self.agreement, self.noise, self.annotators, self.spread = agreement, noise, annotators, annotator_spread
        self.round_steps, self.round_labels = label_schedule(num_queries - self.initial, rounds, horizon,
                                                             label_decay_steps)
        self.scales: np.ndarray | None = None  # the annotators' noise, fixed by the first informative batch
        self.correct = self.informative = 0
        self.rng = np.random.default_rng(0)  # the labeler's random stream, seeded by the run in `gather`
        self.web = web if labeler == "human" else None  # people on the labeling page instead of the simulated oracle
        if labeler == "human" and web is None:
            raise ValueError("preference.labeler=human needs the labeling page's settings, preference.web")
        self.fps = fps
        self.asked = 0  # labeler=human: queries asked so far (a skip gives no pair, a tie two)
        self.extra_steps = 0  # env steps rolled out for queries alone (not the optimizer's own experience)

    # ------------------------------------------------------------ asking the labeler
    def query(self, policy: Policy, prefs: Preferences, count: int, env: Environment, run: RunContext,
              rng: np.random.Generator, reward: RewardModel | None, step: int,
              experience: list[Trajectory] | None = None) -> None:
        """Choose `count` fragment pairs of `policy`'s behaviour, label them and append them to `prefs`: from
        `experience` (the optimizer's recent rollouts) where it holds enough steps, else from rollouts of
        `policy` made for the purpose (their env steps are counted: preference/extra_env_steps)."""
        need = 2 * count * self.fragment_length  # steps enough for every asked fragment to be disjoint
        trajs = list(experience or [])
        if sum(len(t) for t in trajs) < need:
            trajs, seed = [], run.seed + 50_000 + 1_000 * len(prefs.pairs)
            while (have := sum(len(t) for t in trajs)) < need:
                episodes = 16 if not trajs else int(np.clip(math.ceil((need - have) * len(trajs) / have), 16, 512))
                trajs += rollout(policy, env, episodes, seed=seed + len(trajs))
            self.extra_steps += sum(len(t) for t in trajs)
        n_candidates = count * (self.candidates if reward is not None and self.selection == "disagreement" else 1)
        fragments = cut_fragments(trajs, 2 * n_candidates, self.fragment_length, rng)
        chosen = np.arange(count)
        if n_candidates > count:
            assert isinstance(reward, EnsembleReward)
            variance = preference_variance(reward.member_returns(fragments))
            chosen = np.argsort(-variance, kind="stable")[:count]
            run.log({"preference/disagreement_candidates": float(variance.mean()),
                     "preference/disagreement_asked": float(variance[chosen].mean())}, step)
        items = [fragments[i] for k in chosen for i in (2 * k, 2 * k + 1)]
        if self.web is not None:
            self.ask_people(items, trajs, prefs, env, run, step)
            return
        first = np.array([t.true_return for t in items[0::2]])
        second = np.array([t.true_return for t in items[1::2]])
        informative = first != second
        if self.scales is None and informative.any():
            factors = annotator_factors(self.annotators, self.spread, rng)
            scale = 0.0 if self.agreement == 1.0 else calibrate(np.abs(first - second)[informative], factors,
                                                                 self.agreement, self.noise)
            self.scales = annotator_scales(scale, factors, self.noise)
        first_wins, correct = label(first, second, np.zeros(1) if self.scales is None else self.scales,
                                    self.noise, rng)
        self.correct += int(correct[informative].sum())
        self.informative += int(informative.sum())
        base, demo_base = len(prefs.items), len(prefs.demos)
        for item in items:
            item.info["fragment_of"] += demo_base
        index = base + 2 * np.arange(count)
        pairs = np.where(first_wins[:, None], np.stack([index, index + 1], 1), np.stack([index + 1, index], 1))
        prefs.items.extend(items)
        prefs.demos.extend(trajs)
        prefs.pairs = np.concatenate([prefs.pairs, pairs])
        run.log({"preference/queries": len(prefs.pairs), "preference/informative_queries": self.informative,
                 "preference/label_agreement": self.correct / max(self.informative, 1),
                 "preference/extra_env_steps": self.extra_steps,
                 "preference/fragment_return": float(np.mean([t.true_return for t in items]))}, step)

    def ask_people(self, items: list[Trajectory], trajs: list[Trajectory], prefs: Preferences, env: Environment,
                   run: RunContext, step: int) -> None:
        """preference.labeler=human: the fragment pairs `items` go to the labeling page; the policy waits until
        they are labeled (preference.web.timeout), then their pairs (none for a skip, both ways for a tie) join
        `prefs`. A kill while it waits loses no label: a resumed run comes back to this round from the
        checkpoint taken right before it (`QueryRounds.waits`) with the same fragments, and the page asks only the
        unlabeled ones. A pair of one fragment drawn twice is not asked."""
        assert self.web is not None
        items = distinct_pairs(items)
        self.web.open(run, f"rexlab · {run.name or env.name} (online)",
                      f"Which clip shows the {env.name} agent doing its task better?")
        base, demo_base = len(prefs.items), len(prefs.demos)
        queries = clip_queries(items, env, self.fps, base=base)
        labels = self.web.ask(queries, run)
        for item in items:
            item.info["fragment_of"] += demo_base
        prefs.items.extend(items)
        prefs.demos.extend(trajs)
        pairs = preference_pairs(queries, labels, prefs.items)
        prefs.pairs = np.concatenate([prefs.pairs, np.array(pairs, dtype=np.int64).reshape(-1, 2)])
        self.asked += len(queries)
        run.log(self.web.metrics(queries) | {"preference/queries": self.asked, "preference/extra_env_steps":
                                             self.extra_steps, "preference/fragment_return":
                                             float(np.mean([t.true_return for t in items]))}, step)

    # ------------------------------------------------------------ the PreferenceSource interface
    def gather(self, env: Environment, run: RunContext, policy: SavedPolicy | None = None) -> Preferences:
        self.rng = np.random.default_rng(run.seed + 5000)
        prefs = Preferences(items=[], pairs=np.zeros((0, 2)), demonstrations=[])
        self.query(UniformPolicy(env.action_space, run.seed + 5000), prefs, self.initial, env, run, self.rng,
                   None, 0)
        return prefs

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "scales": self.scales, "correct": self.correct,
                "informative": self.informative, "asked": self.asked, "extra_steps": self.extra_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.scales, self.correct, self.informative = state["scales"], state["correct"], state["informative"]
        self.asked, self.extra_steps = state.get("asked", 0), state.get("extra_steps", 0)

    def online_callback(self, prefs: Preferences, reward: RewardModel, env: Environment,
                        run: RunContext) -> IterationCallback | None:
        if not len(self.round_steps):
            return None
        if self.selection == "disagreement" and not isinstance(reward, EnsembleReward):
            raise TypeError(f"preference.selection=disagreement needs a reward model whose ensemble members can be "
                            f"asked (member_returns); {type(reward).__name__} has none: use "
                            f"preference.selection=uniform")
        return QueryRounds(self, prefs, reward, env, run)


class QueryRounds(IterationCallback):
    """The optimizer's callback of an online source: at each round's env step, label the round's pairs
    of the current policy's fragments and refit the reward. Its state (the rounds done, every label so
    far, the labeler's random stream and noise, the reward's nets) goes into the optimizer's checkpoints."""

    wants_experience = True

    def __init__(self, source: OnlinePreferences, prefs: Preferences, reward: RewardModel, env: Environment,
                 run: RunContext) -> None:
        self.source, self.prefs, self.reward, self.env, self.run = source, prefs, reward, env, run
        self.next_round = 0
        self.recent: list[Trajectory] = []  # the optimizer's latest rollouts, enough steps for the largest round
        self.keep = 2 * int(source.round_labels.max(initial=0)) * source.fragment_length

    def experience(self, trajectories: list[Trajectory]) -> None:
        if self.next_round >= len(self.source.round_steps):
            self.recent = []  # no round is left to ask
            return
        self.recent += trajectories
        while len(self.recent) > 1 and sum(len(t) for t in self.recent[1:]) >= self.keep:
            self.recent.pop(0)

    def __call__(self, policy: Policy, env_steps: int, recent_return: float) -> bool:
        source, due = self.source, 0
        while self.next_round < len(source.round_steps) and env_steps >= source.round_steps[self.next_round]:
            due += int(source.round_labels[self.next_round])
            self.next_round += 1
        if due > 0:
            source.query(policy, self.prefs, due, self.env, self.run, source.rng, self.reward, env_steps,
                         self.recent)
            self.reward.fit(self.prefs, self.env, self.run.nested())
        return False

    def waits(self, env_steps: int) -> bool:
        """With people labeling, a round waits for them."""
        rounds = self.source.round_steps
        return self.source.web is not None and self.next_round < len(rounds) and env_steps >= rounds[self.next_round]

    def state_dict(self) -> dict[str, Any]:
        prefs = self.prefs
        return {"next_round": self.next_round, "items": prefs.items, "pairs": prefs.pairs, "demos": prefs.demos,
                "recent": self.recent, "source": self.source.state_dict(), "reward": self.reward.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        prefs = self.prefs
        self.next_round, self.recent = int(state["next_round"]), list(state.get("recent", []))
        prefs.items[:], prefs.pairs = state["items"], state["pairs"]
        assert prefs.demonstrations is not None
        prefs.demonstrations[:] = state["demos"]
        self.source.load_state_dict(state["source"])
        self.reward.load_state_dict(state["reward"])
