"""Data types shared by every stage: trajectories (and their snippets), text responses, preferences.

Shapes use T for time steps, N for items and P for preference pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Generic, TypeVar

import numpy as np


@dataclass
class Trajectory:
    """One episode (or a prefix of one) of a control environment.

    obs:     (T, *obs_shape), the observation at which each action was taken: float32 vectors,
             or uint8 frames (C, H, W) for image tasks (kept as uint8: Atari demos are large).
    actions: (T, *action_shape), the actions taken.
    rewards: (T,) float32, the environment's true reward for each step.
    info:    where the trajectory came from (e.g. {"checkpoint_steps": 20480}); "true_return"
             there stands for the sum of rewards when only the return is known (nan rewards).
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not len(self.obs) == len(self.actions) == len(self.rewards):
            raise ValueError(
                f"Trajectory arrays disagree in length: obs {len(self.obs)}, "
                f"actions {len(self.actions)}, rewards {len(self.rewards)}"
            )

    def __len__(self) -> int:
        return len(self.rewards)

    def snippet(self, start: int, length: int) -> Trajectory:
        """Steps [start, start + length) as a trajectory of their own (info notes where they came from)."""
        if not 0 <= start <= start + length <= len(self):
            raise ValueError(f"snippet [{start}, {start + length}) outside a trajectory of {len(self)} steps")
        window = slice(start, start + length)
        info = {k: v for k, v in self.info.items() if k != "true_return"} | {"start": start}
        return Trajectory(self.obs[window], self.actions[window], self.rewards[window], info)

    @property
    def true_return(self) -> float:
        """Undiscounted sum of the true rewards (or info["true_return"] where only that is known)."""
        return float(self.info.get("true_return", np.sum(self.rewards)))


@dataclass
class Response:
    """One response to a prompt (text track): what a language model or a person wrote.

    prompt: the prompt it answers; text: the response alone (without the prompt).
    gold: its gold reward where one is known (e.g. VADER sentiment for simulated labels), else None.
    info: where it came from (e.g. {"line": 12, "annotator": "a3"} for a preference file).
    """

    prompt: str
    text: str
    gold: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


def same_prompt_pairs(responses: Sequence[Response]) -> list[tuple[int, int]]:
    """Every pair (i, j), i < j, of responses to the same prompt: prompts in order of first appearance,
    pairs within a prompt in itertools.combinations order."""
    by_prompt: dict[str, list[int]] = {}
    for i, r in enumerate(responses):
        by_prompt.setdefault(r.prompt, []).append(i)
    return [pair for group in by_prompt.values() for pair in combinations(group, 2)]


Item = TypeVar("Item", Trajectory, Response)
"""What preferences are over: trajectories (control) or responses (text)."""


@dataclass
class Preferences(Generic[Item]):
    """Items and which of them are preferred to which.

    items: N trajectories (control) or responses (text), all of one kind.
    pairs: (P, 2) int64; row (i, j) says item i is preferred over item j.
    scores: (N,) float or None; the score a ranking was made from (true return, negative noise
            level, ...), higher is better. Kept for plots and correlations; learners use `pairs`.
    demonstrations: the demonstrations behind the items when the items also hold other rollouts
            (noise injection); None when the items are the demonstrations.
    baselines: true returns of baseline policies the source trained on the way (noise injection's
            behavioural clone: {"bc": ...}), for the evaluation's eval/beats_<name>.
    """

    items: list[Item]
    pairs: np.ndarray
    scores: np.ndarray | None = None
    demonstrations: list[Item] | None = None
    baselines: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pairs = np.asarray(self.pairs, dtype=np.int64).reshape(-1, 2)
        bad = (self.pairs < 0) | (self.pairs >= len(self.items))
        if bad.any():
            raise ValueError(f"preference pair indices out of range for {len(self.items)} items")

    @classmethod
    def from_ranking(cls, items: list[Item], scores: np.ndarray) -> Preferences[Item]:
        """All N choose 2 pairs of a ranking by `scores` (higher is better); ties give no pair."""
        scores = np.asarray(scores, dtype=np.float64)
        if len(scores) != len(items):
            raise ValueError(f"{len(scores)} scores for {len(items)} items")
        pairs = [
            (i, j) if scores[i] > scores[j] else (j, i)
            for i, j in combinations(range(len(items)), 2)
            if scores[i] != scores[j]
        ]
        return cls(items=items, pairs=np.array(pairs, dtype=np.int64).reshape(-1, 2), scores=scores)

    @property
    def demos(self) -> list[Item]:
        """The demonstrations: `demonstrations` where given, else the items themselves."""
        return self.demonstrations if self.demonstrations is not None else self.items

    def best_first(self, count: int | None = None) -> list[Item]:
        """The `count` best items by score (all if None), best first; source order without scores."""
        order = np.arange(len(self.items)) if self.scores is None else np.argsort(-self.scores, kind="stable")
        return [self.items[i] for i in order[:count]]


def cut_fragments(trajs: list[Trajectory], count: int, length: int, rng: np.random.Generator) -> list[Trajectory]:
    """`count` fragments of up to `length` steps, each starting at a step drawn uniformly from all
    possible starts: any step of a trajectory that ended (info["terminated"]; the fragment is cut
    at the end), only starts leaving `length` steps in one cut by a time limit (or whole, if shorter)."""
    starts = np.array([len(t) if t.info.get("terminated") else max(1, len(t) - length + 1) for t in trajs])
    offsets = np.cumsum(starts)
    out = []
    for g in rng.integers(offsets[-1], size=count):
        k = int(np.searchsorted(offsets, g, side="right"))
        start = int(g - (offsets[k] - starts[k]))
        fragment = trajs[k].snippet(start, min(length, len(trajs[k]) - start))
        fragment.info["fragment_of"] = k
        out.append(fragment)
    return out
