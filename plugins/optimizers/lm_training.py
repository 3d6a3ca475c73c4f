"""Maximum-likelihood training of the text policy: policy=pretrain (causal LM loss on a text corpus)
and policy=sft (supervised fine-tuning: the same loss on demonstrations, prompt tokens masked).

Both minimise the mean negative log-likelihood of the next token, -log pi(x_t | x_<t), over the tokens
that count: every token of a corpus block (pretraining, Radford et al. 2018), or only a demonstration's
response tokens and its closing EOS (SFT, as the supervised baselines of Stiennon et al. 2020 and
Ouyang et al. 2022, which train on the demonstration given the prompt). AdamW with a cosine decay to 0,
one held-out split for */val_loss. They are options of their own rather than policy=bc with env=text:
behavioral cloning's settings (MLP sizes, observation normalisation, entropy bonus) mean nothing for a
language model, and their data (a corpus, prompt-response demonstrations) is read from files, not from
a preference source. The result is a TextPolicy whose reference is the model before training, so the
text evaluation reports its KL to the starting point.

Data: policy.path, or the bundled files for the default task (plugins/reviews.py): review_corpus.txt
(paragraphs separated by blank lines) and review_demos.jsonl ({"prompt": str, "response": str} lines).
The model trained is the recipe's current one (the pretrained model before SFT in
experiment=chatgpt_recipe, or policy.init), else `policy.model`, else env.model; it is saved as a
save_pretrained folder (checkpoints/<stage>/) the next stage starts from.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from core.errors import NamedError
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
from core.jsonl import exact_fields, json_object, read_jsonl, text_field
from core.run import ResumableLoader, RunContext
from core.schema import LearningRate, OpenUnit, PositiveInt
from core.types import Preferences, Trajectory
from plugins.policies.text import LoraSettings, TextPolicy, build_text_policy
from plugins.reviews import CORPUS, DEMONSTRATIONS

IGNORE = -100
"""Label of tokens that do not count in the loss (prompt tokens in SFT, padding)."""


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits (B, L, V) at each position, labels (B, L) the tokens themselves with IGNORE where they do not
    count -> mean -log p(token_t | tokens_<t) over the counted tokens t >= 1, a scalar."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE)


class DataFileError(NamedError, ValueError):
    """A corpus or demonstration file that cannot be read; the message names file, line and field."""


def read_demonstrations(path: Path) -> list[tuple[str, str]]:
    """JSONL {"prompt": str, "response": str} lines (blank lines skipped) -> (prompt, response) pairs.
    Raises DataFileError listing every malformed line as FILE:LINE: field 'NAME': problem."""

    def parse(value: Any, line: int) -> tuple[str, str]:
        record = json_object(value, '{"prompt": ..., "response": ...}')
        exact_fields(record, ("prompt", "response"))
        return text_field(record, "prompt", allow_empty=True), text_field(record, "response")

    return read_jsonl(path, "policy.path", parse, DataFileError, minimum=2,
                      needs="at least 2 demonstrations (training and held out)")


def read_corpus(path: Path) -> list[str]:
    """A text file -> its paragraphs (separated by blank lines)."""
    if not path.is_file():
        raise DataFileError(f"policy.path {path}: no such file")
    paragraphs = [" ".join(p.split()) for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    if len(paragraphs) < 2:
        raise DataFileError(f"policy.path {path}: needs at least 2 paragraphs (separated by blank lines)")
    return paragraphs


class CausalLMModule(L.LightningModule):
    """Trains a TextPolicy's LM on (input_ids, labels) sequences; logs <prefix>/train_loss, val_loss."""

    def __init__(self, policy: TextPolicy, train: list[tuple[list[int], list[int]]],
                 val: list[tuple[list[int], list[int]]], prefix: str, lr: float, batch_size: int,
                 total_steps: int) -> None:
        super().__init__()
        self.policy, self.train_set, self.val_set, self.prefix = policy, train, val, prefix
        self.lr, self.batch_size, self.total_steps = lr, batch_size, total_steps
        self.val_losses: list[torch.Tensor] = []
        self.strict_loading = False  # checkpoints hold the trained weights only (prune_checkpoint)

    def collate(self, batch: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        longest = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), longest), self.policy.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), longest), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for k, (x, y) in enumerate(batch):
            ids[k, :len(x)], labels[k, :len(y)], mask[k, :len(x)] = torch.tensor(x), torch.tensor(y), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    def train_dataloader(self) -> DataLoader:
        return ResumableLoader(self.train_set, batch_size=self.batch_size, collate_fn=self.collate)  # type: ignore[arg-type]

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, collate_fn=self.collate)  # type: ignore[arg-type]

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW([p for p in self.policy.parameters() if p.requires_grad], lr=self.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.policy.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return causal_lm_loss(logits, batch["labels"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log(f"{self.prefix}/train_loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]), sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.val_losses.append(self._loss(batch))

    def on_validation_epoch_end(self) -> None:
        self.log(f"{self.prefix}/val_loss", torch.stack(self.val_losses).mean(), prog_bar=True)
        self.val_losses.clear()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.policy.prune_checkpoint(checkpoint, "policy.")


class CausalLMTraining(Optimizer):
    """Shared by policy=pretrain and policy=sft: fields documented in conf/policy/<option>.yaml."""

    capabilities = Capabilities(observations=frozenset({"text"}), actions=frozenset({"token"}), uses_reward=False,
                                data_parallel=True)
    prefix = "lm"
    bundled = CORPUS
    unit = "examples"

    def __init__(self, model: str | None = None, path: str | None = None, epochs: PositiveInt = 3,
                 batch_size: PositiveInt = 8, lr: LearningRate = 5e-5, max_length: PositiveInt = 128,
                 val_fraction: OpenUnit = 0.1, lora: LoraSettings | None = None) -> None:
        self.model, self.path, self.epochs, self.batch_size, self.lr = model, path, epochs, batch_size, lr
        self.max_length, self.val_fraction = max_length, val_fraction
        self.lora = LoraSettings(**lora) if lora is not None and not isinstance(lora, LoraSettings) else lora

    def examples(self, policy: TextPolicy, env: PromptTask, path: Path) -> list[tuple[list[int], list[int]]]:
        """(input_ids, labels) token lists, at most max_length long."""
        raise NotImplementedError

    def fit(self, env: Environment, reward: RewardModel, run: RunContext,
            demonstrations: list[Trajectory] | None = None, callback: IterationCallback | None = None,
            init: SavedPolicy | None = None, preferences: Preferences | None = None) -> Policy:
        """Train on policy.path (or the bundled file), from `init` (else policy.model, else env.model);
        `reward` is unused."""
        if not isinstance(env, PromptTask):
            raise TypeError(f"policy={self.prefix} trains language models in env=text, got {type(env).__name__}")
        with torch.random.fork_rng():
            torch.manual_seed(run.seed)
            model = init.model if init is not None else (self.model or env.model)
            policy = build_text_policy(model, env.max_new_tokens, lora=self.lora)
        data = self.examples(policy, env, Path(self.path) if self.path else self.bundled)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(run.seed)).tolist()
        n_val = min(len(data) - 1, max(1, round(len(data) * self.val_fraction)))
        val, train = [data[k] for k in order[:n_val]], [data[k] for k in order[n_val:]]
        steps = math.ceil(len(train) / self.batch_size) * self.epochs
        module = CausalLMModule(policy, train, val, self.prefix, self.lr, run.per_process(self.batch_size), steps)
        trainer = run.trainer(max_steps=steps, max_epochs=self.epochs, log_every_n_steps=1, num_sanity_val_steps=0,
                              unit=f"{self.prefix} batches of {self.batch_size} {self.unit}")
        trainer.validate(module, verbose=False)  # the untrained model's held-out loss, the start of the curve
        run.fit(trainer, module)
        policy.eval()
        return policy


class Pretrain(CausalLMTraining):
    """policy=pretrain: the causal LM loss on every token of a corpus, cut into blocks of max_length
    tokens (paragraphs joined by EOS)."""

    prefix = "pretrain"
    bundled = CORPUS
    unit = "blocks"

    def examples(self, policy: TextPolicy, env: PromptTask, path: Path) -> list[tuple[list[int], list[int]]]:
        stream: list[int] = []
        for ids in policy.tokenizer(read_corpus(path), add_special_tokens=False)["input_ids"]:
            stream += list(ids) + [policy.eos_id]
        blocks = [stream[k:k + self.max_length] for k in range(0, len(stream), self.max_length)]
        return [(b, b) for b in blocks if len(b) > 1]


class SFT(CausalLMTraining):
    """policy=sft: the causal LM loss on each demonstration's response and closing EOS, given its prompt
    (prompt tokens masked); a demonstration longer than max_length keeps its prompt's end and its
    response's start."""

    prefix = "sft"
    bundled = DEMONSTRATIONS
    unit = "demonstrations"

    def examples(self, policy: TextPolicy, env: PromptTask, path: Path) -> list[tuple[list[int], list[int]]]:
        out = []
        for prompt, response in read_demonstrations(path):
            p = policy.encode(env.present([prompt]))[0]
            r = list(policy.tokenizer(response, add_special_tokens=False)["input_ids"]) + [policy.eos_id]
            p = p[-max(1, self.max_length // 2):] if len(p) + len(r) > self.max_length else p
            r = r[: self.max_length - len(p)]
            out.append((p + r, [IGNORE] * len(p) + r))
        return out
