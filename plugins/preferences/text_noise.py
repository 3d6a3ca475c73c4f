"""preference=noise_injection with env=text: D-REX's automatic ranking (Brown, Goo, Niekum, CoRL 2019,
arXiv:1907.03976) for a language model, with no labels at all.

D-REX rolls a behavioural clone of the demonstrations out with epsilon-greedy noise at several levels and
ranks the rollouts by noise alone. A language model needs no clone: the starting model (env.model, or the
recipe's current model, e.g. the SFT one) already is the demonstrator. Its responses to drawn training prompts
are sampled at every level of a noise schedule, each token replaced with probability epsilon by a token drawn
uniformly from the vocabulary (TextPolicy.generate's `epsilon`), optionally at a per-level sampling
temperature too, and every two responses to one prompt draw at different levels are ranked by noise: the less
noisy one preferred. The task's gold reward is computed only to report how well this ranking agrees with it
(preference/label_agreement and the mean gold at each level); it never labels anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from itertools import combinations

import numpy as np
import torch
from tqdm.auto import tqdm

from core.interfaces import Capabilities, Environment, PreferenceSource, PromptTask, SavedPolicy
from core.run import RunContext
from core.schema import ConfigError, Positive, PositiveInt, Unit
from core.types import Preferences, Response
from plugins.policies.text import build_text_policy

log = logging.getLogger(__name__)

DEFAULT_NOISE_LEVELS = (0.0, 0.05, 0.1, 0.2, 0.4, 1.0)
"""D-REX's grid (control: 0.05 to 1.0 in steps of 0.05; Atari: 1.0, 0.75, 0.5, 0.25, 0.02) adapted to tokens.
A response is a chain of tokens, each a chance to go wrong, so the damage compounds: over 16 tokens epsilon 0.1
already swaps about 2 tokens and 0.4 about 6, and SmolLM2-135M-Instruct's responses are visibly garbled from
0.2 on and plain word salad from 0.4 (between 0.4 and 1.0 they differ little). Measured on env=text (96 drawn
prompts, 16 tokens), the mean gold (VADER) at 0, 0.05, 0.1, 0.2, 0.4, 1.0 was 0.18, 0.17, 0.08, 0.10, 0.04, 0.04,
the ranking agreeing with the gold order on 59% of the pairs of different gold. So the grid is dense near zero,
where the responses still read as text, and keeps 0.0 (the model itself, as D-REX ranks the demonstrations
above every level) and 1.0 (pure noise: uniform random tokens)."""


class TextNoiseInjection(PreferenceSource):
    """preference=noise_injection with env=text. noise_levels: the epsilon grid (probability of a uniformly
    random token at each step; 0 the model itself, 1 pure noise); temperatures: the sampling temperature at each
    level (null: 1.0 at every level), which must not fall as epsilon rises; prompts: prompts drawn (with
    replacement) from the training prompts; rollouts_per_level: responses per drawn prompt at each level; model:
    the LM to sample (null: the recipe's current model, else env.model); batch_size: responses generated at once.

    Pairs: within each prompt draw (each draw its own group, even where a prompt is drawn twice), every two
    responses at levels of different noise, the less noisy preferred; a level is less noisy than another if
    neither its epsilon nor its temperature is higher. scores: -(epsilon + temperature - 1), i.e. -epsilon at
    temperature 1."""

    capabilities = Capabilities(observations=frozenset({"text"}), actions=frozenset({"token"}))

    def __init__(self, noise_levels: Sequence[Unit] = DEFAULT_NOISE_LEVELS,
                 temperatures: Sequence[Positive] | None = None, prompts: PositiveInt = 128,
                 rollouts_per_level: PositiveInt = 1, model: str | None = None, batch_size: PositiveInt = 32) -> None:
        self.noise_levels = [float(e) for e in noise_levels]
        if temperatures is None:
            self.temperatures = [1.0] * len(self.noise_levels)
        elif len(temperatures) != len(self.noise_levels):
            raise ConfigError(f"preference.temperatures: {len(temperatures)} temperatures for "
                              f"{len(self.noise_levels)} noise levels (preference.noise_levels); give one per level, "
                              f"or null for 1.0 at every level")
        else:
            self.temperatures = [float(t) for t in temperatures]
        levels = list(zip(self.noise_levels, self.temperatures, strict=True))
        if len(set(levels)) < 2:
            raise ConfigError(f"preference.noise_levels: {self.noise_levels}: needs at least two different levels "
                              f"(responses at one level are tied: no pair)")
        for (e1, t1), (e2, t2) in combinations(levels, 2):
            if (e1 - e2) * (t1 - t2) < 0:
                raise ConfigError(f"preference.temperatures: {self.temperatures}: the temperature must not fall as "
                                  f"the noise level rises (epsilon {e1:g} at temperature {t1:g}, {e2:g} at {t2:g}: "
                                  f"neither level is the noisier one)")
        self.prompts, self.rollouts_per_level, self.model, self.batch_size = (
            prompts, rollouts_per_level, model, batch_size)

    def gather(self, env: Environment, run: RunContext, policy: SavedPolicy | None = None) -> Preferences[Response]:
        if not isinstance(env, PromptTask):
            raise TypeError(f"text noise injection samples a language model's responses to a prompt task "
                            f"(env=text), got {type(env).__name__}")
        model = self.model or (policy.model if policy is not None else env.model)
        rng = np.random.default_rng(run.seed + 3000)
        draws = rng.integers(len(env.train_prompts), size=self.prompts)
        prompts = [env.train_prompts[k] for k in draws for _ in range(self.rollouts_per_level)]
        groups = [g for g in range(self.prompts) for _ in range(self.rollouts_per_level)]
        start = time.perf_counter()
        with torch.random.fork_rng():
            torch.manual_seed(run.seed)
            sampler = build_text_policy(model, env.max_new_tokens, batch_size=self.batch_size, reference=False)
        sampler.eval()
        queries = sampler.encode(env.present(prompts))
        items: list[Response] = []
        levels = list(zip(self.noise_levels, self.temperatures, strict=True))
        for k, (eps, temp) in enumerate(tqdm(levels, desc="text noise injection", disable=not run.progress,
                                             leave=False)):
            sampler.temperature = temp
            generator = torch.Generator().manual_seed(run.seed + 3001 + k)
            texts = [text for b in range(0, len(queries), self.batch_size)
                     for text in sampler.decode(sampler.generate(queries[b:b + self.batch_size], generator,
                                                                 epsilon=eps))]
            items += [Response(p, t, info={"noise": eps, "temperature": temp, "draw": g})
                      for p, t, g in zip(prompts, texts, groups, strict=True)]
        gold = np.asarray(env.gold([r.prompt for r in items], [r.text for r in items]), dtype=np.float64)
        for item, g in zip(items, gold, strict=True):
            item.gold = float(g)
        log.info("sampled %d responses at %d noise levels in %.0f s", len(items), len(levels),
                 time.perf_counter() - start)
        pairs = noise_pairs(items)
        report(items, pairs, gold, run)
        scores = np.array([-(r.info["noise"] + r.info["temperature"] - 1.0) for r in items])
        return Preferences(items=items, pairs=pairs, scores=scores)


def less_noisy(a: Response, b: Response) -> bool:
    """Whether response a was sampled at a level strictly less noisy than b's (neither epsilon nor temperature
    higher, one of them lower)."""
    ea, ta, eb, tb = a.info["noise"], a.info["temperature"], b.info["noise"], b.info["temperature"]
    return ea <= eb and ta <= tb and (ea, ta) != (eb, tb)


def noise_pairs(items: Sequence[Response]) -> np.ndarray:
    """(P, 2) pairs (less noisy, noisier) of every two items of one prompt draw (info["draw"]) at different
    levels where one is the less noisy."""
    by_group: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        by_group.setdefault(item.info["draw"], []).append(i)
    pairs = [(i, j) if less_noisy(items[i], items[j]) else (j, i)
             for members in by_group.values() for i, j in combinations(members, 2)
             if less_noisy(items[i], items[j]) or less_noisy(items[j], items[i])]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def report(items: Sequence[Response], pairs: np.ndarray, gold: np.ndarray, run: RunContext) -> None:
    """Log how well the noise ranking agrees with the gold reward, and the mean gold at each level."""
    metrics = {"preference/gold_mean": float(gold.mean()), "preference/gold_std": float(gold.std())}
    decided = gold[pairs[:, 0]] != gold[pairs[:, 1]]
    if decided.any():
        metrics["preference/label_agreement"] = float(np.mean(gold[pairs[decided, 0]] > gold[pairs[decided, 1]]))
    levels = sorted({(r.info["noise"], r.info["temperature"]) for r in items})
    varied = len({t for _, t in levels}) > 1
    rows = []
    for eps, temp in levels:
        at = np.array([(r.info["noise"], r.info["temperature"]) == (eps, temp) for r in items])
        name = f"preference/gold_at_noise_{eps:g}" + (f"_temperature_{temp:g}" if varied else "")
        metrics[name] = float(gold[at].mean())
        rows.append(f"  {eps:>7g} {temp:>11g} {gold[at].mean():>9.3f} {gold[at].std():>8.3f} {at.sum():>9d}")
    run.log(metrics, 0)
    log.info("noise ranking: %d pairs, agreement with the gold reward %.3f (pairs of equal gold left out)\n"
             "  epsilon temperature gold mean gold std responses\n%s", len(pairs),
             metrics.get("preference/label_agreement", float("nan")), "\n".join(rows))
