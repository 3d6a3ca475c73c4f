"""env=text: writing a response to a prompt as a token-level MDP, for RLHF on language models.

The MDP (Ziegler et al. 2019, arXiv:1909.08593; core's PromptTask): the state is the prompt and the tokens
written so far, the action is the next token, transitions are deterministic (append the token), and an episode ends
at the end-of-sequence token or after `max_new_tokens` tokens. The true (gold) reward arrives at the
end: here the VADER sentiment of the response (plugins/reviews.py), so the default task is
"write a positive review" of the bundled review openings (plugins/reviews.py's data) or of the
user's prompts (`env.prompts=FILE.jsonl`, one {"prompt": str} a line). The per-token KL penalty
r_t = -beta (log pi(a_t|s_t) - log pi_ref(a_t|s_t)), with the reward model's score added at the last
token, is the optimiser's shaping (plugins/optimizers/text_ppo.py): the environment knows no reference.

`make_vec` returns a real gymnasium vector env over this MDP (observations: token ids padded with -1,
actions: token ids), usable with any Policy's `act`; the text optimisers generate whole batches with
the LM directly (a LanguagePolicy's `sample`), which is the same MDP with a KV cache.

Prompts are split once (a fixed shuffle, whatever the run's seed) into training prompts and
`held_out_fraction` held-out prompts, on which `evaluate` samples the policy and the reference: gold
reward, KL to the reference, win rate against the reference's responses, and samples/<tag>.jsonl.
The split holds out that share of each prompt kind (experiment=cai: 20 of the 80 red-team prompts and
20 of the 80 helpful ones), so every kind's held-out measure rests on its share of prompts.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

from core.errors import NamedError
from core.evaluation import pearson
from core.interfaces import TOKEN_PAD, GoldScorer, LanguagePolicy, Policy, PromptTask, RewardModel
from core.jsonl import exact_fields, json_object, read_jsonl, text_field
from core.plots import harmless_vs_helpful
from core.run import RunContext
from core.schema import OpenUnit, PositiveInt
from plugins.lm import SMOLLM2, load_tokenizer
from plugins.prompt_format import PromptFormat, Template, conversation
from plugins.reviews import SentimentGold

log = logging.getLogger(__name__)


class PromptFileError(NamedError, ValueError):
    """A prompt file that cannot be read whole; the message names file, line and field."""


def read_prompts(path: str | Path) -> list[tuple[str, str | None]]:
    """A JSONL file of {"prompt": str} lines, each with an optional "kind" (a string, e.g. "red_team"), blank lines
    skipped -> (prompt, kind or None) in file order. Raises PromptFileError listing every malformed line as
    FILE:LINE: field 'NAME': problem."""

    def parse(value: Any, line: int) -> tuple[str, str | None]:
        record = json_object(value, '{"prompt": ..., "kind": ... (optional)}')
        exact_fields({k: v for k, v in record.items() if k != "kind"}, ("prompt",))
        return text_field(record, "prompt"), text_field(record, "kind") if "kind" in record else None

    return read_jsonl(path, "env.prompts", parse, PromptFileError, minimum=2,
                      needs="at least 2 prompts (training and held out)")


class TokenMDP(gym.Env):
    """One episode: a prompt drawn at reset, then one token per step. Observation: prompt + response
    token ids, right-padded with -1 to (longest prompt + max_new_tokens,). Reward: 0 until the last
    step, then the gold reward of the decoded response; the last step's info has prompt and response."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, prompts: list[str], prompt_ids: list[list[int]], tokenizer: Any, max_new_tokens: int,
                 gold: Callable[[Sequence[str], Sequence[str]], np.ndarray]) -> None:
        self.prompts, self.prompt_ids, self.tokenizer = prompts, prompt_ids, tokenizer
        self.max_new_tokens, self.gold, self.eos_id = max_new_tokens, gold, int(tokenizer.eos_token_id)
        self.width = max(len(ids) for ids in prompt_ids) + max_new_tokens
        self.observation_space = gym.spaces.Box(TOKEN_PAD, len(tokenizer) - 1, shape=(self.width,), dtype=np.int64)
        self.action_space = gym.spaces.Discrete(len(tokenizer))
        self.prompt_index = 0
        self.response: list[int] = []

    def _obs(self) -> np.ndarray:
        obs = np.full(self.width, TOKEN_PAD, dtype=np.int64)
        tokens = self.prompt_ids[self.prompt_index] + self.response
        obs[: len(tokens)] = tokens
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.prompt_index = int(self.np_random.integers(len(self.prompts)))
        self.response = []
        return self._obs(), {"prompt": self.prompts[self.prompt_index]}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        token = int(action)
        self.response.append(token)
        terminated = token == self.eos_id
        truncated = not terminated and len(self.response) >= self.max_new_tokens
        reward, info = 0.0, {}
        if terminated or truncated:
            prompt = self.prompts[self.prompt_index]
            text = self.tokenizer.decode([t for t in self.response if t != self.eos_id], skip_special_tokens=True)
            reward = float(self.gold([prompt], [text])[0])
            info = {"prompt": prompt, "response": text}
        return self._obs(), reward, terminated, truncated, info


def held_out_split(kinds: Sequence[str | None], fraction: float) -> np.ndarray:
    """Which prompts are held out (bool (N,)), from the prompts' kinds in file order: `fraction` of each kind
    (rounded; at least one of a kind with two or more prompts, never all of one), taken in one fixed shuffle of all
    the prompts, the same for every run. Prompts of one kind (the review task) get the plain split of that shuffle."""
    order = np.random.default_rng(0).permutation(len(kinds))
    held = np.zeros(len(kinds), dtype=bool)
    for kind in dict.fromkeys(kinds):
        members = [k for k in order if kinds[k] == kind]
        n_held = min(len(members) - 1, max(1, round(len(members) * fraction)))
        held[members[:n_held]] = True
    if not held.any() and len(kinds) >= 2:  # (kinds of one prompt each)
        held[order[0]] = True
    return held


class TextEnv(PromptTask):
    """env=text. Fields documented in conf/env/text.yaml."""

    name = "text"
    observation_kind = "text"
    action_kind = "token"

    def __init__(self, model: str = SMOLLM2, prompts: str | None = None, max_new_tokens: PositiveInt = 16,
                 held_out_fraction: OpenUnit = 0.25, eval_samples_per_prompt: PositiveInt = 2,
                 gold: GoldScorer | None = None, template: Template = "plain", examples: str | None = None,
                 chat_template: bool | None = None) -> None:
        self.model, self.max_new_tokens, self.eval_samples_per_prompt = model, max_new_tokens, eval_samples_per_prompt
        self.scorer = gold if gold is not None else SentimentGold()
        read = read_prompts(prompts if prompts is not None else self.scorer.default_prompts)
        all_prompts = [prompt for prompt, _ in read]
        self.prompt_kinds = {prompt: kind for prompt, kind in read if kind is not None}
        held = held_out_split([kind for _, kind in read], held_out_fraction)
        self.eval_prompts = [p for p, h in zip(all_prompts, held, strict=True) if h]
        self.train_prompts = [p for p, h in zip(all_prompts, held, strict=True) if not h]
        self.tokenizer = load_tokenizer(model)
        if chat_template is None:  # the task's choice: continue text as it is, ask an assistant through its template
            chat_template = not self.scorer.continuation
        self.format = PromptFormat(self.tokenizer, template, examples if examples is not None
                                   else self.scorer.default_examples, chat_template)
        if chat_template and not getattr(self.tokenizer, "chat_template", None):
            log.info("env.chat_template: %s has no chat template; prompts go to it as Human:/Assistant: turns", model)
        self.train_ids = self.tokenizer(self.present(self.train_prompts), add_special_tokens=False)["input_ids"]
        probe = self._make()
        self._obs_space, self._act_space = probe.observation_space, probe.action_space
        self._reference_cache: dict[tuple[int, int], tuple[list[str], np.ndarray]] = {}

    def gold(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """The task's true reward of whole responses (N,): env.gold's score (by default VADER compound sentiment in
        [-1, 1]), each prompt with its kind."""
        return self.scorer.score(prompts, responses, [self.prompt_kinds.get(p) for p in prompts])

    def present(self, prompts: Sequence[str]) -> list[str]:
        """What the model continues: each prompt under env.template, through the chat template (env.chat_template)."""
        return self.format(prompts)

    def conversation(self, turns: Sequence[str]) -> str:
        return conversation(self.tokenizer, turns, self.format.chat)

    def _make(self) -> TokenMDP:
        return TokenMDP(self.train_prompts, [list(x) for x in self.train_ids], self.tokenizer,
                        self.max_new_tokens, self.gold)

    def make_vec(self, num_envs: int) -> gym.vector.VectorEnv:
        return gym.vector.SyncVectorEnv([self._make] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP)

    @property
    def observation_space(self) -> gym.Space:
        return self._obs_space

    @property
    def action_space(self) -> gym.Space:
        return self._act_space

    def signature(self) -> dict[str, Any]:
        """A language model fits the task if it has the task's tokens: kinds and vocabulary size (the
        observation width depends on the prompts and max_new_tokens, which a model does not)."""
        return {"env": self.name, "observations": self.observation_kind, "actions": self.action_kind,
                "action_space": str(self.action_space)}

    # ------------------------------------------------------------ evaluation
    def evaluation_prompts(self, episodes: int) -> list[str]:
        """Each held-out prompt max(eval_samples_per_prompt, ceil(episodes / held-out prompts)) times."""
        per_prompt = max(self.eval_samples_per_prompt, math.ceil(episodes / len(self.eval_prompts)))
        return [p for p in self.eval_prompts for _ in range(per_prompt)]

    def evaluate(self, policy: Policy, reward: RewardModel, run: RunContext, episodes: int,
                 seed: int) -> dict[str, float]:
        """The final evaluation (core's hook): evaluate_text with the tag "final", then plots/gold_vs_kl.png."""
        if not isinstance(policy, LanguagePolicy):
            raise TypeError(f"env=text evaluates language-model policies, got {type(policy).__name__}")
        metrics = self.evaluate_text(policy, reward, run, episodes, seed, "final")
        gold_vs_kl(run.output_dir / "plots" / "gold_vs_kl.png", run.tracker.history, metrics,
                   run.name or run.output_dir.name, self.scorer.label)
        if {"eval/harmlessness", "eval/helpfulness"} <= set(metrics):  # a task scored on both axes (experiment=cai)
            metrics |= self.evaluate_base(self.evaluation_prompts(episodes), seed)
            path = run.output_dir / "plots" / "harmless_vs_helpful.png"
            harmless_vs_helpful(path, [(run.name or "run", metrics)], run.name or run.output_dir.name)
        run.tracker.set_tag("video", "skipped: env=text renders no video (its samples are samples/final.jsonl)")
        return metrics

    def axes(self, prompts: Sequence[str], responses: Sequence[str], gold: np.ndarray, prefix: str) -> dict[str, float]:
        """The gold scorer's held-out measures (e.g. harmlessness, helpfulness) of responses whose gold rewards
        `gold` are, as eval/<prefix><name>."""
        found = self.scorer.metrics(responses, [self.prompt_kinds.get(p) for p in prompts], gold)
        return {f"eval/{prefix}{name}": value for name, value in found.items()}

    @torch.no_grad()
    def evaluate_base(self, prompts: list[str], seed: int) -> dict[str, float]:
        """The task's own model (env.model), untrained, asked plainly and with the few-shot template: the prompting
        baselines of the harmlessness-helpfulness picture (eval/base_*, eval/few_shot_*)."""
        from plugins.policies.text import build_text_policy  # (a plugin module the final evaluation alone needs)

        with torch.random.fork_rng():
            base = build_text_policy(self.model, self.max_new_tokens, reference=False).eval()
        metrics: dict[str, float] = {}
        baselines: tuple[tuple[str, Template], ...] = (("base_", "plain"), ("few_shot_", "few_shot"))
        for prefix, template in baselines:
            if template == "few_shot" and self.format.examples_path is None:
                continue  # (a task with no worked examples has no few-shot baseline)
            present = PromptFormat(self.tokenizer, template, self.format.examples_path, self.format.chat)
            _, texts = base.sample(present(prompts), seed)
            metrics |= self.axes(prompts, texts, self.gold(prompts, texts), prefix)
        return metrics

    @torch.no_grad()
    def evaluate_text(self, policy: LanguagePolicy, reward: RewardModel, run: RunContext, episodes: int, seed: int,
                      tag: str) -> dict[str, float]:
        """Sample the policy and its reference on the held-out prompts (same prompts, same seed every
        time) and measure: eval/gold_reward_mean (= eval/true_return_mean, the MDP's true return),
        eval/kl_to_ref (mean over responses of the summed log-ratio log pi - log pi_ref of their tokens,
        a Monte Carlo estimate of KL(pi || pi_ref) in nats per response), eval/win_rate_vs_ref (share
        of prompts where the policy's response has the higher gold reward, ties half), and the
        learned reward where there is one. Writes samples/<tag>.jsonl."""
        prompts = self.evaluation_prompts(episodes)
        rollout, texts = policy.sample(self.present(prompts), seed)
        key = (seed, len(prompts))
        if key not in self._reference_cache:  # the reference does not change: sample it once
            _, ref_texts = policy.sample(self.present(prompts), seed, reference=True)
            self._reference_cache[key] = (ref_texts, self.gold(prompts, ref_texts))
        ref_texts, ref_gold = self._reference_cache[key]
        gold = self.gold(prompts, texts)
        kl = policy.log_ratio(rollout)
        wins = np.where(gold > ref_gold, 1.0, np.where(gold == ref_gold, 0.5, 0.0))
        metrics = {"eval/gold_reward_mean": float(gold.mean()), "eval/gold_reward_std": float(gold.std()),
                   "eval/true_return_mean": float(gold.mean()), "eval/true_return_std": float(gold.std()),
                   "eval/kl_to_ref": float(kl.mean()), "eval/win_rate_vs_ref": float(wins.mean()),
                   "eval/ref_gold_reward_mean": float(ref_gold.mean()),
                   "eval/response_tokens": float(np.mean(policy.response_lengths(rollout)))}
        metrics |= self.axes(prompts, texts, gold, "") | self.axes(prompts, ref_texts, ref_gold, "ref_")
        learned = None
        if not reward.uses_env_reward:
            learned = reward.score(prompts, texts)
            metrics["eval/learned_reward_mean"] = float(learned.mean())
            metrics["eval/learned_gold_correlation"] = pearson(learned, gold)  # does the reward model still track gold?
        rows = [{"prompt": p, "response": r, "gold": float(g), "kl": float(k), "reference": rr,
                 "reference_gold": float(rg)} | ({} if learned is None else {"learned": float(learned[i])})
                for i, (p, r, g, k, rr, rg) in enumerate(zip(prompts, texts, gold, kl, ref_texts, ref_gold,
                                                             strict=True))]
        path = run.output_dir / "samples" / f"{tag}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        run.tracker.log_artifact(path, "samples")
        log.info("evaluation %s: gold %.3f (reference %.3f), KL %.2f nats, win rate %.2f", tag,
                 metrics["eval/gold_reward_mean"], metrics["eval/ref_gold_reward_mean"], metrics["eval/kl_to_ref"],
                 metrics["eval/win_rate_vs_ref"])
        return metrics


def gold_vs_kl(path: Path, history: dict[str, list[tuple[int, float]]], final: dict[str, float], name: str,
               gold: str = "VADER compound") -> None:
    """Gold reward against KL to the reference over training: each iteration's training batch, the
    held-out evaluations, the final one, and the reference's gold reward (KL 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    if history.get("train/kl") and history.get("train/true_return"):
        kl = dict(history["train/kl"])
        points = [(kl[s], g) for s, g in history["train/true_return"] if s in kl]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, "-o", ms=3, lw=1, alpha=0.6, color="tab:orange", label="training batches")
    if history.get("eval/kl_to_ref") and history.get("eval/gold_reward_mean"):
        eval_kl = [v for _, v in history["eval/kl_to_ref"]]
        eval_gold = [v for _, v in history["eval/gold_reward_mean"]][: len(eval_kl)]
        ax.scatter(eval_kl[: len(eval_gold)], eval_gold, color="tab:blue", zorder=4, label="held-out evaluations")
    ax.scatter([final["eval/kl_to_ref"]], [final["eval/gold_reward_mean"]], color="black", marker="*", s=120,
               zorder=5, label="final policy")
    ax.axhline(final["eval/ref_gold_reward_mean"], color="tab:gray", ls="--", lw=1, label="reference policy")
    ax.set(xlabel="KL(policy || reference), nats per response", ylabel=f"gold reward ({gold})",
           title=f"{name}\ngold reward against KL over training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
