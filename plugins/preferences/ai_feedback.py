"""preference=ai_feedback: labels from a judge model under a written constitution instead of people (RL from AI
feedback; Bai et al. 2022, "Constitutional AI", arXiv:2212.08073, section 4).

Another source samples the responses (`rollouts`: by default several responses of the current model, the SFT
model in a recipe, to drawn training prompts, as preference=synthetic compares); `num_queries` pairs of responses
to the same prompt are drawn, each with a principle drawn from the constitution (as the paper: one principle per
comparison), and the judge (plugins/judges/lm_judge.py: any causal LM, both orders asked) gives P(first better).
That probability is the soft label: the pair is kept with the response it favours as chosen and the probability
on it, which reward.soft_labels=true trains to (binary cross-entropy; with hard labels the side it favours wins);
a verdict of exactly 0.5 keeps the pair both ways. Each label carries its principle and the judge's reasoning
(chain of thought) and is written with them in checkpoints/preferences.jsonl.

Logged: preference/judge_agreement (where the task has a gold reward: the share of pairs of different gold whose
verdict favours the higher gold; 0.5 counts half), preference/label_agreement (the same, as every labeler
reports it), preference/position_bias (the judge's mean probability of the first slot, 0.5: none) and
preference/judge_confidence (the mean |P - 0.5| of the verdicts).
"""

from __future__ import annotations

import copy
import logging
import time

import numpy as np

from core.interfaces import Capabilities, Environment, PreferenceSource, SavedPolicy
from core.run import RunContext
from core.schema import PositiveInt
from core.types import Preferences, Response, same_prompt_pairs
from plugins.constitution import draw, read_constitution
from plugins.judges.lm_judge import LMJudge
from plugins.lm import SMOLLM2

log = logging.getLogger(__name__)


def judge_agreement(probability: np.ndarray, first_gold: np.ndarray, second_gold: np.ndarray) -> float:
    """Over pairs of different gold: the share whose verdict P(first better) favours the higher gold, 0.5 half."""
    informative = first_gold != second_gold
    if not informative.any():
        return float("nan")
    p, first_better = probability[informative], (first_gold > second_gold)[informative]
    return float(np.mean(np.where(p == 0.5, 0.5, (p > 0.5) == first_better)))


class AIFeedback(PreferenceSource):
    """preference=ai_feedback; fields documented in conf/preference/ai_feedback.yaml. rollouts: the source whose
    responses are compared (responses to the same prompt are paired)."""

    capabilities = Capabilities(observations=frozenset({"text"}), actions=frozenset({"token"}))

    def __init__(self, rollouts: PreferenceSource, judge: str = SMOLLM2, constitution: str | None = None,
                 num_queries: PositiveInt | None = 256, chain_of_thought: bool = False, cot_tokens: PositiveInt = 64,
                 few_shot: str | None = None, chat_template: bool = True, batch_size: PositiveInt = 16) -> None:
        self.rollouts, self.judge_model, self.num_queries = rollouts, judge, num_queries
        self.principles = read_constitution(constitution)  # (a bad file is named before any work)
        self.judge_settings = {"chain_of_thought": chain_of_thought, "cot_tokens": cot_tokens, "few_shot": few_shot,
                               "chat_template": chat_template, "batch_size": batch_size}

    def gather(self, env: Environment, run: RunContext, policy: SavedPolicy | None = None) -> Preferences[Response]:
        source = self.rollouts.gather(env, run, policy)
        responses = source.demonstrations or source.items
        if not responses or not all(isinstance(r, Response) for r in responses):
            raise TypeError("preference=ai_feedback compares responses to prompts (env=text); its rollouts source "
                            "gave none")
        candidates = same_prompt_pairs(responses)
        rng = np.random.default_rng(run.seed + 5000)
        wanted = len(candidates) if self.num_queries is None else self.num_queries
        if len(candidates) < wanted:
            raise ValueError(f"preference.num_queries={self.num_queries} pairs asked, but the responses form "
                             f"{len(candidates)} pairs to the same prompt; lower it or sample more "
                             f"(preference.rollouts.prompts)")
        chosen = [candidates[int(k)] for k in rng.permutation(len(candidates))[:wanted]]
        principles = draw(self.principles, len(chosen), rng)
        start = time.perf_counter()
        judge = LMJudge(self.judge_model, **self.judge_settings)  # type: ignore[arg-type]
        first, second = [responses[i] for i, _ in chosen], [responses[j] for _, j in chosen]
        verdicts = judge.judge([r.prompt for r in first], [r.text for r in first], [r.text for r in second],
                               [p.comparison for p in principles])
        log.info("AI feedback: %d pairs judged by %s in %.0f s", len(chosen), self.judge_model,
                 time.perf_counter() - start)
        items: list[Response] = []
        pairs: list[tuple[int, int]] = []
        for a, b, p, principle, why in zip(first, second, verdicts.probability, principles, verdicts.rationales,
                                           strict=True):
            a, b = copy.deepcopy(a), copy.deepcopy(b)  # (each label's own copies: the probability lives on them)
            meta = {"principle": principle.name, "rationale": why, "judge": self.judge_model}
            a.info |= meta | {"probability": float(p)}
            b.info |= meta | {"probability": float(1.0 - p)}
            k = len(items)
            items += [a, b]
            pairs += [(k, k + 1), (k + 1, k)] if p == 0.5 else [(k, k + 1)] if p > 0.5 else [(k + 1, k)]
        metrics = {"preference/queries": float(len(chosen)),
                   "preference/position_bias": float(np.mean(verdicts.first_slot)),
                   "preference/judge_confidence": float(np.mean(np.abs(verdicts.probability - 0.5)))}
        if all(r.gold is not None for r in first + second):
            agreement = judge_agreement(verdicts.probability, np.array([r.gold for r in first], dtype=float),
                                        np.array([r.gold for r in second], dtype=float))
            if np.isfinite(agreement):
                metrics |= {"preference/judge_agreement": agreement, "preference/label_agreement": agreement}
        run.log(metrics, 0)
        log.info("AI feedback: position bias %.3f (0.5: none), agreement with the gold %s", metrics[
            "preference/position_bias"], f"{metrics['preference/judge_agreement']:.3f}"
            if "preference/judge_agreement" in metrics else "unknown")
        return Preferences(items=items, pairs=np.array(pairs, dtype=np.int64).reshape(-1, 2), demonstrations=None)
