"""preference=ranked_demos: demonstrations from a file, ranked by their returns or explicit ranks."""

from __future__ import annotations

from core.demo_files import load_demos
from core.interfaces import Capabilities, Environment, PreferenceSource, SavedPolicy
from core.run import RunContext
from core.types import Preferences


class RankedDemos(PreferenceSource):
    """path: a .npz demonstrations file in the format of core/demo_files.py."""

    capabilities = Capabilities(observations=frozenset({"vector", "image"}), provides_demonstrations=True)

    def __init__(self, path: str) -> None:
        self.path = path

    def gather(self, env: Environment, run: RunContext, policy: SavedPolicy | None = None) -> Preferences:
        trajs, scores = load_demos(self.path)
        expected = env.observation_space.shape
        if trajs[0].obs.shape[1:] != expected:
            raise ValueError(f"preference.path {self.path}: observations have shape {trajs[0].obs.shape[1:]}, "
                             f"but env={env.name} observes {expected}")
        return Preferences.from_ranking(trajs, scores)
