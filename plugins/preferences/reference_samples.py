"""preference=reference_samples: responses of the reference (initial) language model to env=text's
training prompts, several per prompt, ranked within each prompt by the task's gold reward.

On its own it is a noise-free labeler (every pair of responses to one prompt ordered by gold reward;
equal gold gives no pair). It is also what preference=synthetic labels with env=text
(conf/per_env/preference/text_synthetic.yaml): the simulated labeler compares the responses to each
prompt pairwise under its calibrated noise model, as Ziegler et al. 2019 label samples of the initial
policy (4 per prompt, as here) and Ouyang et al. 2022 collect K choose 2 comparisons per prompt.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated

import numpy as np
import torch

from core.interfaces import Capabilities, Environment, PreferenceSource, PromptTask, SavedPolicy
from core.run import RunContext
from core.schema import Positive, PositiveInt, Range
from core.types import Preferences, Response, same_prompt_pairs
from plugins.policies.text import build_text_policy

log = logging.getLogger(__name__)


class ReferenceSamples(PreferenceSource):
    """prompts: prompts drawn (with replacement) from the training prompts; responses_per_prompt:
    responses sampled for each draw; model: the LM to sample (null: the recipe's current model, e.g. the SFT
    model, else env.model); temperature: sampling temperature; batch_size: responses generated at once.
    Pairs: every two responses to the same prompt whose gold rewards differ, the higher preferred."""

    capabilities = Capabilities(observations=frozenset({"text"}), actions=frozenset({"token"}))

    def __init__(self, prompts: PositiveInt = 128, responses_per_prompt: Annotated[int, Range(ge=2)] = 4,
                 model: str | None = None, temperature: Positive = 1.0, batch_size: PositiveInt = 32) -> None:
        self.prompts, self.per_prompt, self.model = prompts, responses_per_prompt, model
        self.temperature, self.batch_size = temperature, batch_size

    def gather(self, env: Environment, run: RunContext, policy: SavedPolicy | None = None) -> Preferences[Response]:
        if not isinstance(env, PromptTask):
            raise TypeError(f"reference samples are responses of a language model to a prompt task (env=text), "
                            f"got {type(env).__name__}")
        model = self.model or (policy.model if policy is not None else env.model)
        rng = np.random.default_rng(run.seed + 3000)
        chosen = rng.integers(len(env.train_prompts), size=self.prompts)
        prompts = [env.train_prompts[k] for k in chosen for _ in range(self.per_prompt)]
        start = time.perf_counter()
        with torch.random.fork_rng():
            torch.manual_seed(run.seed)
            sampler = build_text_policy(model, env.max_new_tokens, self.temperature, batch_size=self.batch_size,
                                        reference=False)
        _, texts = sampler.sample(env.present(prompts), seed=run.seed + 3001)
        gold = env.gold(prompts, texts)
        log.info("sampled %d reference responses in %.0f s", len(texts), time.perf_counter() - start)
        items = [Response(p, t, gold=float(g)) for p, t, g in zip(prompts, texts, gold, strict=True)]
        pairs = [(i, j) if gold[i] > gold[j] else (j, i) for i, j in same_prompt_pairs(items) if gold[i] != gold[j]]
        run.log({"preference/gold_mean": float(gold.mean()), "preference/gold_std": float(gold.std())}, 0)
        return Preferences(items=items, pairs=np.array(pairs, dtype=np.int64).reshape(-1, 2), scores=gold)
