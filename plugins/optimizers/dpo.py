"""policy=dpo: Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290) of a language model on
preferences, with no reward model, and IPO (Azar et al. 2023, arXiv:2310.12036) as `loss=ipo`.

For a preference of response y_w over y_l to prompt x, with log pi(y|x) the summed log-probability of the
response's tokens under the policy and log pi_ref(y|x) under the reference (the starting model: the SFT model
when a recipe stage or policy.init made one, else the task's model), and the log-ratio
    h = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)],
DPO minimises -log sigmoid(beta * h) (the paper's eq. 7) and IPO minimises (h - 1 / (2 beta))^2 (Azar et al.'s
eq. 17, tau = beta), which keeps h finite where DPO would push it without bound on preferences that are never
contradicted. beta * (log pi - log pi_ref) is DPO's implicit reward of a response: dpo/chosen_reward and
dpo/rejected_reward are its means over the batch's preferred and rejected responses, dpo/margin their
difference, dpo/accuracy the share of held-out preferences whose preferred response has the higher implicit
reward (held out by prompt: plugins/response_pairs.py, so no held-out pair shares a prompt or a response with
training; a tie counts half).

As the paper: beta 0.1, the reference's log-probabilities computed once (the reference does not change), a
linear learning-rate warm-up (the paper's 150 steps of its 64-pair batches: 10% of the steps here), then a
constant rate. Where rexlab departs, for a 135M model on a CPU with hundreds of preferences rather than tens of
thousands: LoRA adapters by default (the paper fine-tunes every weight; `policy.lora=null` does here) with a
learning rate suited to them (the paper's 1e-6 is for every weight), AdamW (the paper: RMSprop), batches of
about 16 preferences (the paper: 64) and 3 passes over them (the paper trains until the held-out reward stops
rising). A batch is whole groups (the pairs among one prompt's responses, or a ranking), each response scored once
however many preferences it is in: preference=synthetic pairs each of a prompt's responses with all the others, so
this reads each response once a pass instead of once per pair (as Ouyang et al. 2022 batch a ranking's pairs).
The responses are scored as text, tokenized again from what the preferences hold (a sampler's tokens may not come
back exactly), with no end-of-sequence token appended: env=text's samples are mostly cut at max_new_tokens, and an
EOS the sampler never wrote would be trained as if it had; `eos=true` appends one, for files of finished responses.
A prompt and response longer than `max_length` keep the prompt's last max_length // 2 tokens and the response's
first. The reference's log-probabilities are computed before training in 32-bit; with trainer.precision=bf16-mixed
the policy's differ from them by rounding at the start.
Ties (a preference in both orders) pull h towards 0 under either loss; soft labels (a file's `probability`) are
read as the preference they favour.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from core.evaluation import true_order_accuracy
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
from core.schema import LearningRate, Positive, PositiveInt, UnitOpen
from core.types import Preferences, Response, Trajectory
from plugins.policies.text import LoraSettings, Rollout, TextPolicy, build_text_policy
from plugins.response_pairs import merge_identical, preference_groups, split_by_prompt, tidy

log = logging.getLogger(__name__)


def dpo_loss(chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float,
             loss: Literal["sigmoid", "ipo"] = "sigmoid") -> torch.Tensor:
    """chosen_logratio, rejected_logratio (B,): log pi(y) - log pi_ref(y) of each preference's preferred and
    rejected response -> the loss of each preference (B,): DPO's -log sigmoid(beta h), or IPO's
    (h - 1 / (2 beta))^2, with h = chosen_logratio - rejected_logratio."""
    h = chosen_logratio - rejected_logratio
    if loss == "ipo":
        return (h - 1.0 / (2.0 * beta)) ** 2
    return -F.logsigmoid(beta * h)


def implicit_rewards(chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float
                     ) -> dict[str, torch.Tensor]:
    """DPO's implicit rewards beta * (log pi - log pi_ref): their means over the preferred and the rejected
    responses, the mean margin, and the accuracy (preferred above rejected; a tie counts half)."""
    chosen, rejected = beta * chosen_logratio, beta * rejected_logratio
    correct = torch.where(chosen == rejected, 0.5, (chosen > rejected).float())
    return {"chosen_reward": chosen.mean(), "rejected_reward": rejected.mean(), "margin": (chosen - rejected).mean(),
            "accuracy": correct.mean()}


class Tokenized:
    """Each preference item (a response to a prompt) as token ids: prompt (as the task presents it: `present`;
    ending at most max_length // 2 tokens before the limit when the whole is too long) and response, together at
    most `max_length` tokens."""

    def __init__(self, policy: TextPolicy, items: Sequence[Response], max_length: int, eos: bool,
                 present: Callable[[Sequence[str]], list[str]]) -> None:
        self.pad_id = policy.pad_id
        prompts = policy.encode(present([r.prompt for r in items]))
        responses = policy.tokenizer([r.text for r in items], add_special_tokens=False)["input_ids"]
        self.prompt, self.response = [], []
        for p, r in zip(prompts, responses, strict=True):
            r = list(r) + ([policy.eos_id] if eos else [])
            if not r:  # an empty response: its one token is the EOS that ended it
                r = [policy.eos_id]
            if len(p) + len(r) > max_length:
                p = p[-max(1, max_length // 2):]
                r = r[: max(1, max_length - len(p))]
            self.prompt.append(p)
            self.response.append(r)

    def rollout(self, rows: Sequence[int], policy: TextPolicy) -> Rollout:
        """The items `rows` as a Rollout (prompts left-padded, responses right-padded) for score_tokens."""
        query, query_mask = policy.left_pad([self.prompt[k] for k in rows])
        longest = max(len(self.response[k]) for k in rows)
        response = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
        response_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, k in enumerate(rows):
            response[i, :len(self.response[k])] = torch.as_tensor(self.response[k])
            response_mask[i, :len(self.response[k])] = 1
        return Rollout(query, query_mask, response, response_mask)


Batch = tuple[np.ndarray, np.ndarray]
"""A batch: its item indices (K,) and its preferences (P, 2) as positions in them (preferred, rejected)."""


def pack(groups: list[tuple[np.ndarray, np.ndarray]], size: int, rng: np.random.Generator) -> list[Batch]:
    """Whole groups (a ranking, or the pairs among one prompt's responses) in random order, packed into batches of
    at least `size` preferences (the last may hold fewer): each response of a batch is scored once, however many of
    its preferences it is in."""
    batches: list[Batch] = []
    items: list[np.ndarray] = []
    pairs: list[np.ndarray] = []
    count = 0
    for k in rng.permutation(len(groups)):
        members, local = groups[int(k)]
        pairs.append(local + count)
        items.append(members)
        count += len(members)
        if sum(len(p) for p in pairs) >= size:
            batches.append((np.concatenate(items), np.concatenate(pairs)))
            items, pairs, count = [], [], 0
    if pairs:
        batches.append((np.concatenate(items), np.concatenate(pairs)))
    return batches


def as_is(batch: Batch) -> Batch:
    """A batch as it is: NumPy indices, which stay on the CPU wherever the model is (not tensors for the device)."""
    return batch


class DPOModule(L.LightningModule):
    """One training step: a batch of preferences (its responses scored once each); validation: the held-out
    preferences' loss, implicit rewards and accuracy."""

    def __init__(self, policy: TextPolicy, data: Tokenized, train: list[Batch], val: list[Batch],
                 ref_logp: torch.Tensor, beta: float, loss: Literal["sigmoid", "ipo"], lr: float, total_steps: int,
                 warmup: float) -> None:
        super().__init__()
        self.policy, self.data, self.train_batches, self.val_batches = policy, data, train, val
        self.ref_logp, self.beta, self.loss_kind = ref_logp, beta, loss
        self.lr, self.total_steps = lr, total_steps
        self.warmup_steps = max(1, round(warmup * total_steps)) if warmup > 0 else 0
        self.val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.strict_loading = False  # checkpoints hold the trained weights only (prune_checkpoint)

    def train_dataloader(self) -> DataLoader:
        return ResumableLoader(self.train_batches, batch_size=None, collate_fn=as_is)  # type: ignore[arg-type]

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_batches, batch_size=None, collate_fn=as_is)  # type: ignore[arg-type]

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW([p for p in self.policy.parameters() if p.requires_grad], lr=self.lr)
        warmup = self.warmup_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup)
                                                     if warmup else 1.0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def logratios(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch -> log pi - log pi_ref of its preferences' preferred and rejected responses (P,)."""
        items, pairs = (np.asarray(x) for x in batch)
        logp = self.policy.score_tokens(self.data.rollout(items.tolist(), self.policy))[0].sum(1)
        ratio = logp - self.ref_logp[torch.as_tensor(items)].to(logp.device)
        pairs_t = torch.as_tensor(pairs, device=ratio.device)
        return ratio[pairs_t[:, 0]], ratio[pairs_t[:, 1]]

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        chosen, rejected = self.logratios(batch)
        loss = dpo_loss(chosen, rejected, self.beta, self.loss_kind).mean()
        stats = implicit_rewards(chosen.detach(), rejected.detach(), self.beta)
        self.log("dpo/loss", loss, prog_bar=True, batch_size=len(chosen), sync_dist=True)
        for name in ("chosen_reward", "rejected_reward", "margin"):
            self.log(f"dpo/{name}", stats[name], batch_size=len(chosen), sync_dist=True)
        self.log("dpo/train_accuracy", stats["accuracy"], batch_size=len(chosen), sync_dist=True)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.val_outputs.append(self.logratios(batch))

    def on_validation_epoch_end(self) -> None:
        if not self.val_outputs:
            return
        chosen, rejected = (torch.cat(x) for x in zip(*self.val_outputs, strict=True))
        stats = implicit_rewards(chosen, rejected, self.beta)
        self.log("dpo/val_loss", dpo_loss(chosen, rejected, self.beta, self.loss_kind).mean())
        self.log("dpo/accuracy", stats["accuracy"], prog_bar=True)
        self.log("dpo/val_margin", stats["margin"])
        self.val_outputs.clear()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.policy.prune_checkpoint(checkpoint, "policy.")


class DPO(Optimizer):
    """policy=dpo: fields documented in conf/policy/dpo.yaml. Learns from the preferences over responses the
    preference source gathered (the reward group is unused); starts from `init` (the recipe's current model, e.g.
    the SFT model, or policy.init), else `model`, else env.model, which is also the reference."""

    capabilities = Capabilities(observations=frozenset({"text"}), actions=frozenset({"token"}), uses_reward=False,
                                needs_preferences=True, data_parallel=True)

    def __init__(self, model: str | None = None, beta: Positive = 0.1, loss: Literal["sigmoid", "ipo"] = "sigmoid",
                 lr: LearningRate = 5e-4, epochs: PositiveInt = 3, batch_size: PositiveInt = 16,
                 warmup: UnitOpen = 0.1, val_fraction: UnitOpen = 0.1, val_checks_per_epoch: PositiveInt = 2,
                 max_length: PositiveInt = 128, eos: bool = False, score_batch_size: PositiveInt = 32,
                 lora: LoraSettings | None = None) -> None:
        self.model, self.beta, self.loss, self.lr, self.epochs = model, beta, loss, lr, epochs
        self.batch_size, self.warmup, self.val_fraction, self.val_checks = batch_size, warmup, val_fraction, \
            val_checks_per_epoch
        self.max_length, self.eos, self.score_batch_size = max_length, eos, score_batch_size
        self.lora = LoraSettings(**lora) if lora is not None and not isinstance(lora, LoraSettings) else lora

    def fit(self, env: Environment, reward: RewardModel, run: RunContext,
            demonstrations: list[Trajectory] | None = None, callback: IterationCallback | None = None,
            init: SavedPolicy | None = None, preferences: Preferences | None = None) -> Policy:
        if not isinstance(env, PromptTask):
            raise TypeError(f"policy=dpo trains language models in env=text, got {type(env).__name__}")
        if preferences is None or not preferences.items or not isinstance(preferences.items[0], Response):
            raise TypeError("policy=dpo learns from preferences over text responses (preference=synthetic, file, "
                            "human, ...); it was given none")
        prefs = merge_identical(tidy(preferences, "policy=dpo"))  # (tidy first: it tells annotators' copies apart)
        if len(prefs.pairs) == 0:
            raise ValueError("policy=dpo needs at least one preference pair; the preference source gave none")
        with torch.random.fork_rng():
            torch.manual_seed(run.seed)
            model = init.model if init is not None else (self.model or env.model)
            policy = build_text_policy(model, env.max_new_tokens, lora=self.lora, batch_size=self.score_batch_size)
        groups = preference_groups(prefs)
        rng = np.random.default_rng(run.seed)
        train_groups, val_groups = split_by_prompt(groups, prefs.items, self.val_fraction, rng, "policy.val_fraction")
        train = pack(train_groups, run.per_process(self.batch_size), rng)
        val = pack(val_groups, self.batch_size, rng)
        data = Tokenized(policy, prefs.items, self.max_length, self.eos, env.present)
        used = np.unique(np.concatenate([items for items, _ in train + val]))
        ref_logp = self.reference_logprobs(policy, data, used, len(prefs.items))
        steps_per_epoch = max(1, len(train) // run.processes)  # (a data-parallel fit: each process every world-th)
        total = steps_per_epoch * self.epochs
        log.info("DPO on %d preferences over %d responses (%d preferences held out, by prompt): %d steps of about %d "
                 "preferences, beta %g, loss %s", sum(len(p) for _, p in train), sum(len(i) for i, _ in train),
                 sum(len(p) for _, p in val), total, self.batch_size, self.beta, self.loss)
        module = DPOModule(policy, data, train, val, ref_logp, self.beta, self.loss, self.lr, total, self.warmup)
        trainer = run.trainer(max_steps=total, max_epochs=self.epochs, limit_val_batches=1.0 if val else 0,
                              val_check_interval=max(1, steps_per_epoch // self.val_checks), log_every_n_steps=1,
                              num_sanity_val_steps=0, unit=f"DPO batches of about {self.batch_size} preferences")
        if val:
            trainer.validate(module, verbose=False)  # the starting model's: accuracy about 0.5, the curve's start
        run.fit(trainer, module)
        policy.eval()
        if val:
            self.log_true_accuracy(module, val, prefs.items, run, trainer.global_step)
        return policy

    @torch.no_grad()
    def log_true_accuracy(self, module: DPOModule, val: list[Batch], items: Sequence[Response], run: RunContext,
                          step: int) -> None:
        """dpo/val_true_pair_accuracy: how often the final implicit reward orders the held-out pairs' responses as their
        gold rewards do (pairs of equal gold left out), whatever their (perhaps noisy) labels say; where the
        responses have a gold reward (simulated labels)."""
        used = np.unique(np.concatenate([members for members, _ in val]))
        if any(items[int(k)].gold is None for k in used):
            return
        learned, gold = np.full(len(items), np.nan), np.full(len(items), np.nan)
        for start in range(0, len(used), self.score_batch_size):
            rows = used[start:start + self.score_batch_size]
            logp = module.policy.score_tokens(module.data.rollout(rows.tolist(), module.policy))[0].sum(1)
            learned[rows] = (logp.float().cpu() - module.ref_logp[torch.as_tensor(rows)]).numpy()
        gold[used] = [items[int(k)].gold for k in used]
        accuracy = true_order_accuracy(np.concatenate([members[local] for members, local in val]), learned, gold)
        if math.isfinite(accuracy):
            run.log({"dpo/val_true_pair_accuracy": accuracy}, step)

    @torch.no_grad()
    def reference_logprobs(self, policy: TextPolicy, data: Tokenized, used: np.ndarray, n: int) -> torch.Tensor:
        """log pi_ref of every used item's response (n,; 0 for the unused), once: the reference never changes."""
        out = torch.zeros(n)
        policy.eval()
        for start in range(0, len(used), self.score_batch_size):
            rows = used[start:start + self.score_batch_size].tolist()
            out[rows] = policy.score_tokens(data.rollout(rows, policy), reference=True)[0].sum(1).float().cpu()
        policy.train()
        return out
