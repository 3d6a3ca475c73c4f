"""D-REX: Disturbance-based Reward EXtrapolation (Brown, Goo, Niekum, CoRL 2019, arXiv:1907.03976).

From unranked demonstrations: behavioral cloning, rollouts of the clone under an epsilon-greedy
noise schedule ranked by noise level alone (plugins/noise_ranking.py), then T-REX's ranking loss on
that automatic ranking. The preference source only supplies the demonstrations; their own ranking
picks the best `num_demos` and is otherwise ignored. The clone's true return is the baseline "bc"
(eval/beats_bc).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.interfaces import Capabilities, Environment, Optimizer
from core.run import RunContext
from core.schema import NonNegative, PositiveInt
from core.types import Preferences
from plugins.noise_ranking import noise_ranking
from plugins.rewards.trex import TREX


class DREX(TREX):
    """reward=drex. cloner: the BC optimizer; noise_levels: epsilons; rollouts_per_level: rollouts
    per epsilon; num_demos: clone the best N demonstrations (None: all); include_demonstrations:
    rank the demonstrations above every noise level. The remaining fields are T-REX's."""

    capabilities = Capabilities(observations=frozenset({"vector", "image"}),
                                actions=frozenset({"discrete", "continuous"}),
                                needs_preferences=True, needs_demonstrations=True, data_parallel=True,
                                requires=(("cloner", "needs_demonstrations", "policy"),),
                                notes=("reward=trex preference=noise_injection is D-REX with the noise ranking "
                                       "as its own stage.",))

    def __init__(self, cloner: Optimizer, noise_levels: Sequence[NonNegative], rollouts_per_level: PositiveInt = 5,
                 num_demos: PositiveInt | None = None, include_demonstrations: bool = True, **trex: Any) -> None:
        super().__init__(**trex)
        self.cloner, self.noise_levels, self.rollouts_per_level = cloner, list(noise_levels), rollouts_per_level
        self.num_demos, self.include_demonstrations = num_demos, include_demonstrations

    def fit(self, prefs: Preferences, env: Environment, run: RunContext) -> None:
        ranked = noise_ranking(prefs.best_first(self.num_demos), env, run, self.cloner, self.noise_levels,
                               self.rollouts_per_level, self.include_demonstrations)
        super().fit(ranked, env, run)
        self.baselines = dict(ranked.baselines)
