"""preference=noise_injection: D-REX's automatic ranking as a preference source (Brown, Goo, Niekum, CoRL
2019): noise-injected rollouts of a behavioural clone of another source's demonstrations, ranked by
noise level alone (plugins/noise_ranking.py). With reward=trex this is D-REX, the ranking its own stage."""

from __future__ import annotations

from collections.abc import Sequence

from core.interfaces import Capabilities, Environment, Optimizer, PreferenceSource, SavedPolicy
from core.run import RunContext
from core.schema import NonNegative, PositiveInt
from core.types import Preferences
from plugins.noise_ranking import noise_ranking


class NoiseInjection(PreferenceSource):
    """preference=noise_injection. demonstrations: the source of the demonstrations (their ranking is
    only used to pick the best `num_demos`); cloner: the BC optimizer; noise_levels: epsilons;
    rollouts_per_level: rollouts per epsilon; include_demonstrations: rank the demonstrations above
    every noise level."""

    capabilities = Capabilities(observations=frozenset({"vector", "image"}),
                                actions=frozenset({"discrete", "continuous"}),
                                requires=(("demonstrations", "provides_demonstrations", "preference"),
                                          ("cloner", "needs_demonstrations", "policy")))

    def __init__(self, demonstrations: PreferenceSource, cloner: Optimizer, noise_levels: Sequence[NonNegative],
                 rollouts_per_level: PositiveInt = 5, num_demos: PositiveInt | None = None,
                 include_demonstrations: bool = True) -> None:
        self.demonstrations, self.cloner, self.noise_levels = demonstrations, cloner, list(noise_levels)
        self.rollouts_per_level, self.num_demos = rollouts_per_level, num_demos
        self.include_demonstrations = include_demonstrations

    def gather(self, env: Environment, run: RunContext, policy: SavedPolicy | None = None) -> Preferences:
        demos = self.demonstrations.gather(env, run).best_first(self.num_demos)  # (its learner: the stage's fit)
        return noise_ranking(demos, env, run, self.cloner, self.noise_levels, self.rollouts_per_level,
                             self.include_demonstrations)
