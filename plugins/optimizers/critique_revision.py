"""Supervised Constitutional AI (Bai et al. 2022, "Constitutional AI: Harmlessness from AI Feedback",
arXiv:2212.08073, section 3): critiques and revisions under a constitution, then supervised fine-tuning on them.

For each training prompt of the kind "red_team" (env.prompt_kinds; the bundled experiment=cai prompts say which
are which), the model answers; then, `revisions` times, it is asked to critique its last answer under a principle
drawn from the constitution (its `critique` request) and to rewrite it (the principle's `revision` request), each
round under a newly drawn principle, as the paper. The final revisions, with the model's own answers to the
"helpful" training prompts mixed in (the paper mixes in helpfulness samples so that the model does not lose
helpfulness), are the demonstrations of supervised fine-tuning (the nested `sft` optimizer, conf/policy/sft.yaml):
written first as cai/revisions.jsonl in the SFT format ({"prompt", "response"} lines) and logged as an artifact,
with every round's critique and revision in cai/critiques.jsonl. Prompts of no kind count as helpful.

The conversation follows the task's chat format (env.conversation: the model's chat template where its tokenizer
has one, as SmolLM2-Instruct's, else the paper's "Human: / Assistant:" turns). Where rexlab departs: one round of
revision by default (the paper: up to four; each round here costs two generations of `max_new_tokens` tokens per
prompt on a CPU), responses sampled at `temperature` 1 with a seed, short responses (`max_new_tokens`), `prompts`
(the first N training prompts of each kind; null: all), and a 135M model critiquing itself, which the paper found
works only at scale: the critiques of a small model are weak, which its results say.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
import torch

from core.artifacts import write_atomic
from core.interfaces import (
    Capabilities,
    Environment,
    IterationCallback,
    Optimizer,
    Policy,
    PromptTask,
    RewardModel,
    SavedPolicy,
)
from core.run import RunContext
from core.schema import ConfigError, NonNegativeInt, Positive, PositiveInt
from core.types import Preferences, Trajectory
from plugins.constitution import Principle, draw, read_constitution
from plugins.policies.text import TextPolicy, build_text_policy

log = logging.getLogger(__name__)
RED_TEAM = "red_team"


class CritiqueRevision(Optimizer):
    """Supervised CAI (a recipe stage of experiment=cai): fields documented in conf/policy/critique_revision.yaml.
    sft: the nested supervised fine-tuning optimizer the revisions are given to."""

    capabilities = Capabilities(observations=frozenset({"text"}), actions=frozenset({"token"}), uses_reward=False)

    def __init__(self, sft: Optimizer, model: str | None = None, constitution: str | None = None,
                 revisions: NonNegativeInt = 1, max_new_tokens: PositiveInt = 48, temperature: Positive = 1.0,
                 batch_size: PositiveInt = 16, prompts: PositiveInt | None = None) -> None:
        if not hasattr(sft, "path"):
            raise ConfigError(f"policy.sft is {type(sft).__name__}; supervised CAI needs a supervised fine-tuning "
                              f"optimizer that reads its data from `path` (conf/policy/sft.yaml)")
        self.sft, self.model, self.revisions = sft, model, revisions
        self.principles = read_constitution(constitution, "policy.constitution")
        self.max_new_tokens, self.temperature, self.batch_size = max_new_tokens, temperature, batch_size
        self.prompts = prompts

    def generate(self, policy: TextPolicy, texts: list[str], seed: int) -> list[str]:
        """Each text's continuation, stripped."""
        return [t.strip() for t in policy.sample(texts, seed)[1]] if texts else []

    def revise(self, policy: TextPolicy, env: PromptTask, prompts: list[str], rng: np.random.Generator, seed: int
               ) -> tuple[list[str], list[dict[str, Any]]]:
        """The final revision of the model's answer to each prompt (put as the task puts it: env.present), and
        every round's record."""
        answers = self.generate(policy, env.present(prompts), seed)
        rounds: list[dict[str, Any]] = []
        for r in range(self.revisions):
            principles: list[Principle] = draw(self.principles, len(prompts), rng)
            asked = [env.conversation([p, a, q.critique])
                     for p, a, q in zip(prompts, answers, principles, strict=True)]
            critiques = self.generate(policy, asked, seed + 2 * r + 1)
            asked = [env.conversation([p, a, q.critique, c, q.revision])
                     for p, a, q, c in zip(prompts, answers, principles, critiques, strict=True)]
            revised = self.generate(policy, asked, seed + 2 * r + 2)
            rounds += [{"prompt": p, "round": r + 1, "principle": q.name, "answer": a, "critique": c, "revision": v}
                       for p, a, q, c, v in zip(prompts, answers, principles, critiques, revised, strict=True)]
            answers = [v if v else a for v, a in zip(revised, answers, strict=True)]  # (an empty revision keeps it)
        return answers, rounds

    def fit(self, env: Environment, reward: RewardModel, run: RunContext,
            demonstrations: list[Trajectory] | None = None, callback: IterationCallback | None = None,
            init: SavedPolicy | None = None, preferences: Preferences | None = None) -> Policy:
        if not isinstance(env, PromptTask):
            raise TypeError(f"supervised CAI trains language models in env=text, got {type(env).__name__}")
        red = [p for p in env.train_prompts if env.prompt_kinds.get(p) == RED_TEAM][: self.prompts]
        helpful = [p for p in env.train_prompts if env.prompt_kinds.get(p) != RED_TEAM][: self.prompts]
        if not red:
            raise ValueError("supervised CAI revises answers to red-team prompts, but env.prompts marks none "
                             f'{{"kind": "{RED_TEAM}"}} among the training prompts (experiment=cai bundles some)')
        folder = run.output_dir / "cai"
        demos = folder / "revisions.jsonl"
        if not demos.is_file():  # (a resumed run keeps the revisions it made: they are the SFT data)
            start = time.perf_counter()
            with torch.random.fork_rng():
                torch.manual_seed(run.seed)
                model = init.model if init is not None else (self.model or env.model)
                policy = build_text_policy(model, self.max_new_tokens, self.temperature, batch_size=self.batch_size,
                                           reference=False)
            revised, rounds = self.revise(policy, env, red, np.random.default_rng(run.seed + 7000), run.seed + 7001)
            own = self.generate(policy, env.present(helpful), run.seed + 7100)
            records = [{"prompt": p, "response": r} for p, r in zip(red + helpful, revised + own, strict=True) if r]
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(folder / "critiques.jsonl", "".join(json.dumps(r) + "\n" for r in rounds).encode())
            write_atomic(demos, "".join(json.dumps(r) + "\n" for r in records).encode())
            log.info("supervised CAI: %d red-team answers revised (%d round(s)), %d helpful answers kept, in %.0f s",
                     len(red), self.revisions, len(helpful), time.perf_counter() - start)
            run.log({"cai/red_team_prompts": float(len(red)), "cai/helpful_prompts": float(len(helpful)),
                     "cai/empty_revisions": float(sum(not r["revision"] for r in rounds))}, 0)
            run.tracker.log_artifact(folder, "cai")
        self.sft.path = str(demos)  # type: ignore[attr-defined]
        return self.sft.fit(env, reward, run, init=init)
