"""GRPO for language models: Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath",
arXiv:2402.03300, section 4.1), PPO without a value function.

Each iteration draws `prompts_per_batch` training prompts and samples `group_size` responses to each with
the current policy (a batched, KV-cached walk through env=text's token MDP, as the text PPO). Every
response is scored once, by the reward model (`reward.score`), or with reward=true by the task's gold.
Outcome supervision: every token of response i gets the advantage of its group (the responses to the
same prompt),
    A_i = (r_i - mean(r_group)) / (std(r_group) + eps),
so a group whose responses all score the same carries no signal (advantage 0). The loss per token is
PPO's clipped surrogate on that advantage (`clipped_policy_loss`, control PPO's own) plus the KL penalty
to the reference, beta * KL(pi || pi_ref), estimated per token with Schulman's k3,
    exp(ref - logp) - (ref - logp) - 1   (>= 0, unbiased),
and the objective averages the per-token losses over each response's tokens, then over the responses
(the paper's 1/G sum_i 1/|o_i| sum_t). The KL is in the loss, not in the reward as in the text PPO.
`update_epochs` passes (the paper's mu) over `num_minibatches` minibatches of responses follow each
batch; with one of each (the default) the update is on-policy and the ratio is 1, so clipping never acts.

The reference is the starting model (`init`: the recipe's current model, e.g. the SFT model, or
policy.init; else policy.model; else env.model): with LoRA the same network with its adapters off.

Defaults (conf/policy/grpo.yaml) are the paper's where they fit: clip epsilon 0.2, beta 0.04, mu 1 (also
TRL's default); the std is the group's sample std, plus 1e-4 (as TRL; the paper gives none). rexlab
departs for a 135M model on a CPU: groups of 4 responses (the paper: G = 64), 4 prompts a batch (16
responses, the text PPO's batch, so an iteration costs the same; the paper: 1024 responses), LoRA
adapters by default (the paper fine-tunes every weight; `policy.lora=null` does that here) with a
learning rate for them, 2e-3 (the paper's 1e-6 is for full fine-tuning; the text PPO's 5e-4 moved
SmolLM2 too little at one step a batch, where the text PPO takes 8: on 16 debug-sized iterations
against the gold, held-out gold 0.08 at 5e-4 and 0.71 at 2e-3, the reference's 0.07), and a budget in
generated tokens (`total_timesteps`, as the text PPO's, so one sweep compares the two at equal cost).
The paper's iterative variant (re-training the reward model, resetting the reference) is a recipe's
business, not this optimizer's. Held-out evaluations (env=text's evaluate: gold reward, KL to the
reference, win rate, samples/*.jsonl) run every `eval_every` iterations.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader

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
from core.run import ResumableLoader, RunContext
from core.schema import (
    ConfigError,
    LearningRate,
    NonNegative,
    NonNegativeInt,
    Positive,
    PositiveInt,
    Range,
    structured,
)
from core.types import Preferences, Trajectory
from plugins.optimizers.ppo import clipped_policy_loss
from plugins.policies.text import LoraSettings, Rollout, TextPolicy, build_text_policy

log = logging.getLogger(__name__)

STD_EPS = 1e-4
"""Added to a group's standard deviation before dividing by it (as TRL's GRPO)."""


@dataclass
class GRPOHparams:
    """GRPO settings; every field is documented in conf/policy/grpo.yaml."""

    model: str | None = None
    total_timesteps: PositiveInt = 3584
    prompts_per_batch: PositiveInt = 4
    group_size: Annotated[int, Range(ge=2)] = 4
    update_epochs: PositiveInt = 1
    num_minibatches: PositiveInt = 1
    learning_rate: LearningRate = 2e-3
    clip_coef: Positive = 0.2
    kl_coef: NonNegative = 0.04
    max_grad_norm: Positive = 1.0
    temperature: Positive = 1.0
    lora: LoraSettings | None = field(default_factory=LoraSettings)
    eval_every: NonNegativeInt = 10


def group_advantages(scores: torch.Tensor, group_size: int, eps: float = STD_EPS) -> torch.Tensor:
    """scores (P * G,), each prompt's G responses side by side -> each response's advantage (P * G,):
    (r - mean of its group) / (sample std of its group + eps); 0 for a group whose scores are all equal."""
    groups = scores.reshape(-1, group_size)
    centred = groups - groups.mean(1, keepdim=True)
    return (centred / (groups.std(1, keepdim=True) + eps)).reshape(-1)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled by pi (Schulman's k3, the paper's eq. 4):
    exp(ref - logp) - (ref - logp) - 1, never negative, 0 where the two agree."""
    delta = ref_logprobs - logprobs
    return delta.exp() - delta - 1.0


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
              advantages: torch.Tensor, mask: torch.Tensor, clip_coef: float, kl_coef: float
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO objective to minimise: logprobs (under the policy now), old_logprobs (when sampled),
    ref_logprobs (the reference's), mask (B, T); advantages (B,), one per response.

    Per token: the clipped surrogate of its response's advantage + kl_coef * k3; averaged over each
    response's tokens, then over responses. The surrogate is ppo.clipped_policy_loss over the valid tokens,
    each token's advantage weighted by N / (B * |o_i|) (N valid tokens in all): its plain mean over tokens
    is then the mean over responses of each one's mean over its tokens (the weights are positive, so the
    clipping is unchanged). Returns the loss and stats: approx_kl and clipfrac (per token, from
    clipped_policy_loss), kl_term (the k3 average) and policy_loss (the surrogate alone)."""
    valid = mask.bool()
    m = mask.to(logprobs.dtype)
    lengths = m.sum(1).clamp_min(1.0)  # (every sampled response holds at least one token)
    weights = m / lengths[:, None] * (m.sum() / len(lengths))
    token_adv = advantages[:, None].to(logprobs.dtype) * weights
    policy_loss, stats = clipped_policy_loss(logprobs[valid], old_logprobs[valid], token_adv[valid], clip_coef)
    kl_term = ((k3_kl(logprobs, ref_logprobs) * m).sum(1) / lengths).mean()
    stats = {**stats, "kl_term": kl_term.detach(), "policy_loss": policy_loss.detach()}
    return policy_loss + kl_coef * kl_term, stats


class GRPOModule(L.LightningModule):
    """One training step = one minibatch update; every `updates_per_iteration` steps it first samples
    and scores a new batch of groups."""

    def __init__(self, policy: TextPolicy, hp: GRPOHparams, env: PromptTask, reward: RewardModel,
                 run: RunContext, callback: IterationCallback | None) -> None:
        super().__init__()
        self.policy, self.hp, self.env, self.reward_model = policy, hp, env, reward
        self.run, self.callback = run, callback
        self.batch_size = hp.prompts_per_batch * hp.group_size
        self.num_iterations = max(1, round(hp.total_timesteps / (self.batch_size * env.max_new_tokens)))
        self.updates_per_iteration = hp.update_epochs * hp.num_minibatches
        self.minibatch_size = self.batch_size // hp.num_minibatches
        self.rng = np.random.default_rng(run.seed + 500)
        self.generator = torch.Generator().manual_seed(run.seed + 600)
        self.env_steps, self.start_time = 0, time.time()
        self.recent_return = float("nan")
        self.strict_loading = False  # checkpoints hold the trained weights only (prune_checkpoint)
        self._restored = False  # a batch loaded from a checkpoint, not yet on the device

    def train_dataloader(self) -> DataLoader:
        return ResumableLoader(range(self.num_iterations * self.updates_per_iteration), batch_size=None, shuffle=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The trained weights, and what the next step needs: the current batch (its responses, advantages,
        minibatch order), the counters and the random streams."""
        self.policy.prune_checkpoint(checkpoint, "policy.")
        checkpoint["grpo"] = {
            "env_steps": self.env_steps, "elapsed": time.time() - self.start_time, "recent_return": self.recent_return,
            "rng": self.rng.bit_generator.state, "generator": self.generator.get_state(),
            "rollout": getattr(self, "rollout", None), "buffer": getattr(self, "buffer", None),
            "order": getattr(self, "order", None),
            "callback": self.callback.state_dict() if isinstance(self.callback, IterationCallback) else {}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["grpo"]
        self.env_steps, self.recent_return = state["env_steps"], state["recent_return"]
        self.start_time = time.time() - state["elapsed"]
        self.rng.bit_generator.state = state["rng"]
        self.generator.set_state(state["generator"])
        for name in ("rollout", "buffer", "order"):
            if state[name] is not None:
                setattr(self, name, state[name])
        self._restored = True  # (its tensors are on the CPU: they go to the device at the next step)
        if isinstance(self.callback, IterationCallback):
            self.callback.load_state_dict(state["callback"])

    def on_fit_start(self) -> None:
        self.reward_model.to(self.device)  # scored where the policy generates

    def on_fit_end(self) -> None:
        self.reward_model.to("cpu")  # as Lightning puts the policy back

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.policy.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.hp.learning_rate, eps=1e-5)

    def draw_prompts(self) -> list[str]:
        """`prompts_per_batch` training prompts (distinct where there are enough), each repeated
        `group_size` times side by side: one group per prompt."""
        hp, n = self.hp, len(self.env.train_prompts)
        drawn = self.rng.choice(n, size=hp.prompts_per_batch, replace=hp.prompts_per_batch > n)
        return [self.env.train_prompts[k] for k in drawn for _ in range(hp.group_size)]

    @torch.no_grad()
    def collect(self, iteration: int) -> None:
        """Sample and score a batch of groups, compute the advantages and the log-probabilities the update
        compares against; evaluate when due."""
        hp, policy = self.hp, self.policy
        if hp.eval_every and iteration > 0 and iteration % hp.eval_every == 0:
            metrics = self.env.evaluate_text(policy, self.reward_model, self.run, 0, self.run.seed + 10_000,
                                             f"step{self.env_steps:07d}")
            self.run.log(metrics, self.env_steps)
        t0 = time.time()
        prompts = self.draw_prompts()
        policy.eval()
        rollout = policy.generate(policy.encode(self.env.present(prompts)), self.generator)
        texts = policy.decode(rollout)
        generate_time = time.time() - t0
        gold = self.env.gold(prompts, texts)
        learned = None if self.reward_model.uses_env_reward else self.reward_model.score(prompts, texts)
        scores = torch.as_tensor(gold if learned is None else learned, dtype=torch.float32, device=self.device)
        if not bool(torch.isfinite(scores).all()):
            self.run.non_finite("the reward model's scores of the responses", self.env_steps)
        mask = rollout.response_mask.float()
        logprobs, entropy, _ = policy.score_tokens(rollout)
        ref_logprobs, _, _ = policy.score_tokens(rollout, reference=True)
        self.rollout = rollout
        self.buffer = {"logprobs": logprobs, "ref_logprobs": ref_logprobs, "mask": mask,
                       "advantages": group_advantages(scores, hp.group_size)}
        kl = ((logprobs - ref_logprobs) * mask).sum(1)
        tokens = int(mask.sum())
        self.env_steps += tokens
        self.recent_return = float(np.mean(gold))
        metrics = {"train/true_return": self.recent_return, "train/kl": float(kl.mean()),
                   "train/entropy": float((entropy * mask).sum() / mask.sum()),
                   "train/score": float(scores.mean()),
                   "grpo/reward_std": float(scores.reshape(-1, hp.group_size).std(1).mean()),
                   "train/episode_length": tokens / self.batch_size,
                   "train/sps": self.env_steps / max(time.time() - self.start_time, 1e-9),
                   "train/generate_tokens_per_s": tokens / max(generate_time, 1e-9)}
        if learned is not None:
            metrics["train/learned_return"] = float(np.mean(learned))
        self.run.log(metrics, self.env_steps)
        log.info("iteration %d/%d: gold %.3f, score %.3f (std within groups %.3f), KL %.2f, %.0f tokens/s generated",
                 iteration + 1, self.num_iterations, metrics["train/true_return"], metrics["train/score"],
                 metrics["grpo/reward_std"], metrics["train/kl"], metrics["train/generate_tokens_per_s"])
        self.log("gold", self.recent_return, prog_bar=True, logger=False)
        self.log("kl", float(kl.mean()), prog_bar=True, logger=False)
        policy.train()

    def training_step(self, step: int, batch_idx: int) -> torch.Tensor | None:
        hp = self.hp
        iteration, within = divmod(int(step), self.updates_per_iteration)
        mb = within % hp.num_minibatches
        if within == 0:
            self.collect(iteration)
            if self.callback is not None and self.callback(self.policy, self.env_steps, self.recent_return):
                self.trainer.should_stop = True
                return None
        elif self._restored:  # a batch from the checkpoint, mid-iteration
            self.rollout = self.rollout.to(self.device)
            self.buffer = {k: v.to(self.device) for k, v in self.buffer.items()}
            self._restored = False
        if mb == 0:
            self.order = torch.randperm(self.batch_size)
        rows = self.order[mb * self.minibatch_size:(mb + 1) * self.minibatch_size]
        b = self.buffer
        rollout: Rollout = self.rollout.select(rows)
        logprobs, _, _ = self.policy.score_tokens(rollout)
        loss, stats = grpo_loss(logprobs, b["logprobs"][rows], b["ref_logprobs"][rows], b["advantages"][rows],
                                b["mask"][rows], hp.clip_coef, hp.kl_coef)
        if within == self.updates_per_iteration - 1:
            self.run.log({"grpo/loss": loss.item(), "grpo/kl_term": stats["kl_term"].item(),
                          "train/policy_loss": stats["policy_loss"].item(),
                          "train/approx_kl": stats["approx_kl"].item(), "train/clipfrac": stats["clipfrac"].item()},
                         self.env_steps)
        return loss


def _fields_signature(cls: type) -> inspect.Signature:
    """A signature whose keyword parameters are the dataclass `cls`'s fields (types and defaults): what core's
    schema check (core/schema.py, signature_types) reads to check policy.<field> before any work starts."""
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=f.type))
    return inspect.Signature(params)


class GRPO(Optimizer):
    """policy=grpo (env=text only). Keyword arguments: GRPOHparams' fields (conf/policy/grpo.yaml), set on the
    command line as policy.<field>=...; total_timesteps: tokens to generate (the token MDP's env steps). Starts
    from `init` (the recipe's current model, or policy.init), else policy.model, else env.model, which is then
    also the reference of the KL penalty and of the evaluation. Returns the trained TextPolicy (its reference
    inside, for evaluation)."""

    capabilities = Capabilities(observations=frozenset({"text"}), actions=frozenset({"token"}))

    def __init__(self, **fields: Any) -> None:
        plain = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig | ListConfig) else v
                 for k, v in fields.items()}  # (Hydra passes nested nodes, lora's, as config objects)
        self.hp = structured(GRPOHparams, plain, "policy")  # checks field names, types and ranges, naming any bad key
        responses = self.hp.prompts_per_batch * self.hp.group_size
        if responses % self.hp.num_minibatches:
            raise ConfigError(f"policy.num_minibatches ({self.hp.num_minibatches}) does not divide the batch of "
                              f"policy.prompts_per_batch x policy.group_size = {responses} responses")

    def fit(self, env: Environment, reward: RewardModel, run: RunContext,
            demonstrations: list[Trajectory] | None = None, callback: IterationCallback | None = None,
            init: SavedPolicy | None = None, preferences: Preferences | None = None) -> Policy:
        if not isinstance(env, PromptTask):
            raise TypeError(f"GRPO optimises language models in env=text, got {type(env).__name__}")
        with torch.random.fork_rng():
            torch.manual_seed(run.seed)
            model = init.model if init is not None else (self.hp.model or env.model)
            policy = build_text_policy(model, env.max_new_tokens, self.hp.temperature, value_head=False,
                                       lora=self.hp.lora)
        module = GRPOModule(policy, self.hp, env, reward, run, callback)
        steps = module.num_iterations * module.updates_per_iteration
        trainer = run.trainer(max_steps=steps, gradient_clip_val=self.hp.max_grad_norm, log_every_n_steps=max(1, steps),
                              unit=f"GRPO minibatch updates ({module.updates_per_iteration} per batch of "
                                   f"{self.hp.prompts_per_batch} groups of {self.hp.group_size} responses)")
        run.fit(trainer, module)
        policy.eval()
        return policy


GRPO.__init__.__signature__ = _fields_signature(GRPOHparams)  # type: ignore[attr-defined]
