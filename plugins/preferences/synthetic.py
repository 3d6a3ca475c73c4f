"""preference=synthetic: a simulated labeler comparing pairs of trajectory fragments by true return
(text: pairs of responses to the same prompt by gold reward, e.g. the reference model's samples).

Noise models: "boltzmann" (Boltzmann-rational: P(i preferred) = sigmoid((R_i - R_j) / T), as the
synthetic labels of Christiano et al. 2017 and the Bradley-Terry model assume) or "flip" (the truly
better fragment is chosen, then the label flipped with probability p). The noise is calibrated on
the queried pairs' true returns so that the expected agreement of the final labels with the true
order equals `agreement` (Stiennon et al. 2020 report 0.72 between labelers; Ziegler et al. 2019
about 0.60). With several annotators, each has its own noise (temperature or flip rate scaled by
a log-normal factor) and the label is their majority vote; the shared scale is calibrated so that
the vote meets the target (the noise model: core/labels.py). The measured agreement is logged as
preference/label_agreement.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

import numpy as np

from core.interfaces import Capabilities, Environment, PreferenceSource, SavedPolicy
from core.labels import annotator_factors, annotator_scales, calibrate, label
from core.run import RunContext
from core.schema import NonNegative, PositiveInt, Range
from core.types import Preferences, Response, Trajectory, same_prompt_pairs

log = logging.getLogger(__name__)


class SyntheticLabeler(PreferenceSource):
    """rollouts: the source whose trajectories are cut into fragments (or whose responses are paired
    by prompt); num_queries: labeled pairs (responses: null labels every pair to the same prompt);
    fragment_length: steps per fragment (shorter trajectories give whole ones; responses are compared
    whole); agreement: target agreement of the labels with the true order; noise: "boltzmann" or
    "flip"; annotators: voters per label; annotator_spread: sigma of each annotator's log-normal noise
    factor."""

    capabilities = Capabilities(observations=frozenset({"vector", "image", "text"}))

    def __init__(self, rollouts: PreferenceSource, num_queries: PositiveInt | None = 2000,
                 fragment_length: PositiveInt = 50, agreement: Annotated[float, Range(gt=0.5, le=1)] = 0.72,
                 noise: Literal["boltzmann", "flip"] = "boltzmann", annotators: PositiveInt = 1,
                 annotator_spread: NonNegative = 0.5) -> None:
        self.rollouts, self.num_queries, self.fragment_length = rollouts, num_queries, fragment_length
        self.agreement, self.noise, self.annotators, self.spread = agreement, noise, annotators, annotator_spread

    def fragments(self, trajs: list[Trajectory], rng: np.random.Generator) -> list[Trajectory]:
        """Two random fragments per query, drawn from random trajectories."""
        out = []
        for k in rng.integers(len(trajs), size=2 * int(self.num_queries or 0)):
            traj = trajs[k]
            length = min(self.fragment_length, len(traj))
            fragment = traj.snippet(int(rng.integers(len(traj) - length + 1)), length)
            fragment.info["fragment_of"] = int(k)
            out.append(fragment)
        return out

    def response_pairs(self, responses: list[Response], rng: np.random.Generator) -> list[Response]:
        """Text: pairs of responses to the same prompt (every such pair, in random order; the first
        num_queries of them, or all if it is None), as consecutive items. Every response needs its gold."""
        missing = [k for k, r in enumerate(responses) if r.gold is None]
        if missing:
            raise ValueError(f"preference=synthetic labels responses by their gold reward; response {missing[0]} "
                             f"(and {len(missing) - 1} more) has none")
        pairs = [(responses[i], responses[j]) for i, j in same_prompt_pairs(responses)]
        wanted = len(pairs) if self.num_queries is None else self.num_queries
        if len(pairs) < wanted:
            raise ValueError(f"preference.num_queries={self.num_queries} pairs asked, but the responses form "
                             f"{len(pairs)} pairs to the same prompt; lower it or sample more "
                             f"(preference.rollouts.prompts)")
        return [r for k in rng.permutation(len(pairs))[:wanted] for r in pairs[k]]

    def gather(self, env: Environment, run: RunContext, policy: SavedPolicy | None = None) -> Preferences:
        source = self.rollouts.gather(env, run, policy)  # (a learner there is the stage's one fit)
        trajs = source.demonstrations or source.items
        rng = np.random.default_rng(run.seed + 4000)
        if all(isinstance(t, Response) for t in trajs):  # text: whole responses, gold reward as the truth
            items: list = self.response_pairs(trajs, rng)
            returns = np.array([r.gold for r in items], dtype=np.float64)
        else:
            if self.num_queries is None:
                raise ValueError("preference.num_queries=null (every pair) is for responses; set a number of "
                                 "fragment pairs")
            items = self.fragments(trajs, rng)
            returns = np.array([t.true_return for t in items])
        first, second = returns[0::2], returns[1::2]
        informative = first != second  # equal true returns carry no truth to agree with
        gaps = np.abs(first - second)[informative]
        factors = annotator_factors(self.annotators, self.spread, rng)
        if len(first) and not informative.any():
            log.warning("preference: all %d pairs have equal true returns, so every label is a fair coin and "
                        "preference.agreement cannot be met or measured", len(first))
        scale = calibrate(gaps, factors, self.agreement, self.noise) if informative.any() else 0.0
        first_wins, correct = label(first, second, annotator_scales(scale, factors, self.noise), self.noise, rng)
        index = np.arange(len(items) // 2) * 2
        pairs = np.where(first_wins[:, None], np.stack([index, index + 1], 1), np.stack([index + 1, index], 1))
        metrics: dict[str, float] = {"preference/queries": len(items) // 2,
                                     "preference/informative_queries": int(informative.sum())}
        if informative.any():  # (all ties: no scale was calibrated and no agreement can be measured)
            metrics["preference/noise_scale"] = scale
            metrics["preference/label_agreement"] = float(np.mean(correct[informative]))
        run.log(metrics, 0)
        return Preferences(items=items, pairs=pairs, demonstrations=trajs)
