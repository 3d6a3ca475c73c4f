"""PPO for language models against a learned (or the gold) reward with a KL penalty to the reference
policy: RLHF as in Ziegler et al. 2019 (arXiv:1909.08593) and Stiennon et al. 2020.

Each iteration samples `batch_size` prompts, generates a response to each with the current policy
(a batched, KV-cached walk through env=text's token MDP), and scores the whole response once with the
reward model (r) and the gold reward. The optimised per-token reward is the KL-shaped one of the paper,
    R_t = -beta * (log pi(a_t|s_t) - log pi_ref(a_t|s_t))  (+ r on the response's last token),
and advantages come from GAE over the response tokens (gamma 1, lambda 0.95) with the value head's
estimates; the update is PPO's clipped surrogate and clipped value loss, `update_epochs` passes over
`num_minibatches` minibatches of responses. The loss functions are control PPO's own (`gae`,
`clipped_policy_loss`, `value_loss` from plugins/optimizers/ppo.py), applied to the valid response tokens.

beta is fixed (`adaptive_kl: false`) or adapted towards `kl_target` nats per response with Ziegler et
al.'s proportional controller: e = clip(KL / target - 1, -0.2, 0.2), beta <- beta (1 + e * n / horizon)
after each batch of n responses. As in the paper, the reward model's output is normalised to mean 0
and std 1 on the reference policy's samples (`normalize_reward`; here: the first batch, whose policy is
the reference); `whiten_rewards` instead standardises each batch's scores (as TRL offers).

Defaults (conf/ppo/text.yaml) follow the paper's released code (lm-human-preferences, as TRL's PPO
defaults reproduce it): gamma 1, lambda 0.95, clip 0.2, value clip 0.2, vf_coef 0.1, 4 epochs, beta 0.2,
and target 6 nats with horizon 10000 when adaptive. rexlab departs for a 135M model on a CPU: batches
of 16 responses of at most 16 tokens (the paper's batches are hundreds of responses of 24 tokens),
LoRA adapters by default (the paper fine-tunes every weight; `ppo.lora=null` does that here too) with
a learning rate suited to them, and a budget of minutes (conf/ppo/text.yaml).
Held-out evaluations (env=text's evaluate: gold reward, KL to the reference, win rate, samples/*.jsonl)
run every `eval_every` iterations.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Annotated, Any

import lightning as L
import numpy as np
import torch
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
    Unit,
    structured,
)
from core.types import Preferences, Trajectory
from plugins.optimizers.ppo import clipped_policy_loss, gae, value_loss
from plugins.policies.text import LoraSettings, Rollout, TextPolicy, build_text_policy

log = logging.getLogger(__name__)


@dataclass
class TextPPOHparams:
    """Text PPO settings; every field is documented in conf/ppo/text.yaml."""

    model: str | None = None
    total_timesteps: PositiveInt = 7680
    batch_size: Annotated[int, Range(ge=2)] = 16
    num_minibatches: PositiveInt = 2
    update_epochs: PositiveInt = 4
    learning_rate: LearningRate = 5e-4
    gamma: Unit = 1.0
    gae_lambda: Unit = 0.95
    clip_coef: Positive = 0.2
    clip_vloss: bool = True
    vf_coef: NonNegative = 0.1
    max_grad_norm: Positive = 1.0
    kl_coef: NonNegative = 0.2
    adaptive_kl: bool = False
    kl_target: Positive = 6.0
    kl_horizon: PositiveInt = 10000
    normalize_reward: bool = True
    whiten_rewards: bool = False
    temperature: Positive = 1.0
    lora: LoraSettings | None = None
    eval_every: NonNegativeInt = 5
    target_kl: Positive | None = None


class KLController:
    """beta, fixed or adapted towards a target KL (Ziegler et al. 2019, section 2.2)."""

    def __init__(self, init: float, adaptive: bool, target: float, horizon: int) -> None:
        self.value, self.adaptive, self.target, self.horizon = init, adaptive, target, horizon

    def update(self, kl: float, n: int) -> None:
        """kl: the batch's mean KL (nats per response); n: responses in the batch."""
        if self.adaptive:
            error = float(np.clip(kl / self.target - 1.0, -0.2, 0.2))
            self.value *= 1.0 + error * n / self.horizon


def shaped_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                   beta: float) -> torch.Tensor:
    """scores (B,), logprobs and ref_logprobs (B, T) of the sampled tokens, mask (B, T) -> the per-token
    rewards (B, T): -beta * (log pi - log pi_ref), plus the score on each response's last token."""
    rewards = -beta * (logprobs - ref_logprobs) * mask
    last = (mask.sum(1) - 1).clamp_min(0).long()
    rewards[torch.arange(len(scores)), last] += scores * (mask.sum(1) > 0)
    return rewards


def masked_whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Standardise x over the entries where mask is 1 (others become 0)."""
    valid = x[mask.bool()]
    return (x - valid.mean()) / (valid.std() + 1e-8) * mask


def token_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                     lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over response tokens: rewards, values, mask (B, T) -> advantages, returns (B, T). Each
    response ends at its last valid token (no bootstrap past it), through ppo.gae's (T, N) layout."""
    B, T = rewards.shape
    ended = torch.ones_like(mask)
    ended[:, :-1] = 1.0 - mask[:, 1:]  # step t ends the episode if step t+1 is not part of it
    adv, ret = gae(rewards.T, (values * mask).T, ended.T, torch.zeros(B), gamma, lam)
    return adv.T * mask, ret.T * mask


class TextPPOModule(L.LightningModule):
    """One training step = one minibatch update; every `updates_per_iteration` steps it first samples
    and scores a new batch of responses."""

    def __init__(self, policy: TextPolicy, hp: TextPPOHparams, env: PromptTask, reward: RewardModel,
                 run: RunContext, callback: IterationCallback | None) -> None:
        super().__init__()
        self.policy, self.hp, self.env, self.reward_model = policy, hp, env, reward
        self.run, self.callback = run, callback
        tokens_per_iteration = hp.batch_size * env.max_new_tokens
        self.num_iterations = max(1, round(hp.total_timesteps / tokens_per_iteration))
        self.updates_per_iteration = hp.update_epochs * hp.num_minibatches
        self.minibatch_size = hp.batch_size // hp.num_minibatches
        self.kl = KLController(hp.kl_coef, hp.adaptive_kl, hp.kl_target, hp.kl_horizon)
        self.rng = np.random.default_rng(run.seed + 500)
        self.generator = torch.Generator().manual_seed(run.seed + 600)
        self.reward_shift, self.reward_scale = 0.0, 1.0
        self.env_steps, self.start_time = 0, time.time()
        self.recent_return = float("nan")
        self.strict_loading = False  # checkpoints hold the trained weights only (prune_checkpoint)
        self._restored = False  # a batch loaded from a checkpoint, not yet on the device
        self.updates_done = 0  # updates made on the current batch (-1: stopped by target_kl)

    def train_dataloader(self) -> DataLoader:
        return ResumableLoader(range(self.num_iterations * self.updates_per_iteration), batch_size=None, shuffle=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The trained weights, and what the next step needs: the current batch (its responses, advantages,
        minibatch order), the KL coefficient, the reward normalisation, the counters and random streams."""
        self.policy.prune_checkpoint(checkpoint, "policy.")
        checkpoint["text_ppo"] = {
            "kl_coef": self.kl.value, "reward_shift": self.reward_shift, "reward_scale": self.reward_scale,
            "env_steps": self.env_steps, "elapsed": time.time() - self.start_time, "recent_return": self.recent_return,
            "rng": self.rng.bit_generator.state, "generator": self.generator.get_state(),
            "rollout": getattr(self, "rollout", None), "buffer": getattr(self, "buffer", None),
            "order": getattr(self, "order", None), "updates_done": self.updates_done,
            "callback": self.callback.state_dict() if isinstance(self.callback, IterationCallback) else {}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["text_ppo"]
        self.kl.value = state["kl_coef"]
        self.reward_shift, self.reward_scale = state["reward_shift"], state["reward_scale"]
        self.env_steps, self.recent_return = state["env_steps"], state["recent_return"]
        self.updates_done = state.get("updates_done", 0)
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

    @torch.no_grad()
    def collect(self, iteration: int) -> None:
        """Sample and score a batch, shape the rewards, compute advantages; evaluate when due."""
        hp, policy = self.hp, self.policy
        if hp.eval_every and iteration > 0 and iteration % hp.eval_every == 0:
            metrics = self.env.evaluate_text(policy, self.reward_model, self.run, 0, self.run.seed + 10_000,
                                             f"step{self.env_steps:07d}")
            self.run.log(metrics, self.env_steps)
        t0 = time.time()
        drawn = self.rng.integers(len(self.env.train_prompts), size=hp.batch_size)
        prompts = [self.env.train_prompts[k] for k in drawn]
        policy.eval()
        rollout = policy.generate(policy.encode(self.env.present(prompts)), self.generator)
        texts = policy.decode(rollout)
        generate_time = time.time() - t0
        gold = self.env.gold(prompts, texts)
        learned = None if self.reward_model.uses_env_reward else self.reward_model.score(prompts, texts)
        raw = torch.as_tensor(gold if learned is None else learned, dtype=torch.float32, device=self.device)
        if not bool(torch.isfinite(raw).all()):
            self.run.non_finite("the reward model's scores of the responses", self.env_steps)
        if hp.normalize_reward and iteration == 0:  # the reference's samples: fix gain and bias
            std = float(raw.std()) if len(raw) > 1 else 0.0
            self.reward_shift, self.reward_scale = float(raw.mean()), std if std > 1e-6 else 1.0
        scores = (raw - self.reward_shift) / self.reward_scale
        if hp.whiten_rewards:
            scores = (scores - scores.mean()) / (scores.std() + 1e-8)
        mask = rollout.response_mask.float()
        logprobs, entropy, values = policy.score_tokens(rollout, values=True)
        ref_logprobs, _, _ = policy.score_tokens(rollout, reference=True)
        assert values is not None
        rewards = shaped_rewards(scores, logprobs, ref_logprobs, mask, self.kl.value)
        adv, ret = token_advantages(rewards, values, mask, hp.gamma, hp.gae_lambda)
        self.rollout = rollout
        self.buffer = {"logprobs": logprobs, "values": values, "returns": ret,
                       "advantages": masked_whiten(adv, mask), "mask": mask}
        kl = ((logprobs - ref_logprobs) * mask).sum(1)
        tokens = int(mask.sum())
        self.env_steps += tokens
        self.recent_return = float(gold.mean())
        metrics = {"train/true_return": self.recent_return, "train/kl": float(kl.mean()),
                   "train/entropy": float((entropy * mask).sum() / mask.sum()), "train/kl_coef": self.kl.value,
                   "train/score": float(scores.mean()), "train/non_score_reward": float(-self.kl.value * kl.mean()),
                   "train/episode_length": tokens / hp.batch_size,
                   "train/sps": self.env_steps / max(time.time() - self.start_time, 1e-9),
                   "train/generate_tokens_per_s": tokens / max(generate_time, 1e-9)}
        if learned is not None:
            metrics["train/learned_return"] = float(np.mean(learned))
        self.run.log(metrics, self.env_steps)
        log.info("iteration %d/%d: gold %.3f, score %.3f, KL %.2f, beta %.3f, %.0f tokens/s generated", iteration + 1,
                 self.num_iterations, metrics["train/true_return"], metrics["train/score"], metrics["train/kl"],
                 self.kl.value, metrics["train/generate_tokens_per_s"])
        self.log("gold", self.recent_return, prog_bar=True, logger=False)
        self.log("kl", float(kl.mean()), prog_bar=True, logger=False)
        self.kl.update(float(kl.mean()), hp.batch_size)
        policy.train()

    def training_step(self, step: int, batch_idx: int) -> torch.Tensor | None:
        hp = self.hp
        iteration, within = divmod(int(step), self.updates_per_iteration)
        epoch, mb = divmod(within, hp.num_minibatches)
        if within == 0:
            self.collect(iteration)
            if self.callback is not None and self.callback(self.policy, self.env_steps, self.recent_return):
                self.trainer.should_stop = True
                return None
        elif self._restored:  # a batch from the checkpoint, mid-iteration
            self.rollout = self.rollout.to(self.device)
            self.buffer = {k: v.to(self.device) for k, v in self.buffer.items()}
            self._restored = False
        if within == 0:
            self.updates_done = 0
        if self.updates_done < 0:  # this batch's updates were stopped at the trust region's edge
            return None
        if mb == 0:
            self.order = torch.randperm(hp.batch_size)
        rows = self.order[mb * self.minibatch_size:(mb + 1) * self.minibatch_size]
        b = self.buffer
        rollout: Rollout = self.rollout.select(rows)
        mask = b["mask"][rows].bool()
        logprobs, _, values = self.policy.score_tokens(rollout, values=True)
        assert values is not None
        pg_loss, stats = clipped_policy_loss(logprobs[mask], b["logprobs"][rows][mask], b["advantages"][rows][mask],
                                             hp.clip_coef)
        v_loss = value_loss(values[mask], b["values"][rows][mask], b["returns"][rows][mask],
                            hp.clip_coef if hp.clip_vloss else None)
        loss = pg_loss + hp.vf_coef * v_loss
        stop = hp.target_kl is not None and stats["approx_kl"].item() > 1.5 * hp.target_kl
        if stop or within == self.updates_per_iteration - 1:
            self.run.log({"train/policy_loss": pg_loss.item(), "train/value_loss": v_loss.item(),
                          "train/approx_kl": stats["approx_kl"].item(), "train/clipfrac": stats["clipfrac"].item(),
                          "train/updates": float(self.updates_done + (not stop))}, self.env_steps)
        if stop:  # Spinning Up's early stop: this minibatch already left the trust region; no more updates on it
            self.updates_done = -1
            return None
        self.updates_done += 1
        return loss


class TextPPO(Optimizer):
    """policy=ppo with env=text (conf/policy/ppo.yaml's text variant). hparams: TextPPOHparams fields
    (conf/ppo/text.yaml); total_timesteps: tokens to generate (the token MDP's env steps), overriding
    hparams'. Starts from `init` (the recipe's current model, e.g. the SFT model, or policy.init), else
    ppo.model, else env.model, which is then also the reference of the KL penalty and of the evaluation.
    Returns the trained TextPolicy (its reference inside, for evaluation)."""

    capabilities = Capabilities(observations=frozenset({"text"}), actions=frozenset({"token"}))

    def __init__(self, hparams: TextPPOHparams, total_timesteps: PositiveInt | None = None) -> None:
        self.hp = structured(TextPPOHparams, hparams, "ppo")  # checks field names, types and ranges, naming any bad key
        if total_timesteps is not None:
            self.hp.total_timesteps = int(total_timesteps)
        if self.hp.batch_size % self.hp.num_minibatches:
            raise ConfigError(f"ppo.batch_size ({self.hp.batch_size}) is not divisible by ppo.num_minibatches "
                             f"({self.hp.num_minibatches})")

    def fit(self, env: Environment, reward: RewardModel, run: RunContext,
            demonstrations: list[Trajectory] | None = None, callback: IterationCallback | None = None,
            init: SavedPolicy | None = None, preferences: Preferences | None = None) -> Policy:
        if not isinstance(env, PromptTask):
            raise TypeError(f"the text PPO optimises language models in env=text, got {type(env).__name__}")
        with torch.random.fork_rng():
            torch.manual_seed(run.seed)
            model = init.model if init is not None else (self.hp.model or env.model)
            policy = build_text_policy(model, env.max_new_tokens, self.hp.temperature, value_head=True,
                                       lora=self.hp.lora)
        module = TextPPOModule(policy, self.hp, env, reward, run, callback)
        steps = module.num_iterations * module.updates_per_iteration
        trainer = run.trainer(max_steps=steps, gradient_clip_val=self.hp.max_grad_norm, log_every_n_steps=max(1, steps),
                              unit=f"text PPO minibatch updates ({module.updates_per_iteration} per batch of "
                                   f"{self.hp.batch_size} responses)")
        run.fit(trainer, module)
        policy.eval()
        return policy
