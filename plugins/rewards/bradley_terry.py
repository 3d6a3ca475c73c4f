"""reward=bradley_terry: a scalar reward model of text, r(prompt, response), learned from preferences
with the Bradley-Terry loss, as in RLHF (Stiennon et al. 2020, arXiv:2009.01325; Ouyang et al. 2022,
arXiv:2203.02155).

A pretrained transformer reads prompt and response together; a linear head on its pooled final
hidden state gives the score. For a preference of response c over response d to the same prompt,
the loss is -log sigmoid(r(c) - r(d)). As in the papers:
- the whole network (backbone and head) is trained, for one epoch (both papers: more overfits);
- the head is initialised from N(0, 1 / (d_model + 1)) (Stiennon et al.);
- the K choose 2 pairs of one ranking are one batch element whose pair losses are averaged, so a
  ranking counts as much as a single pair and its responses are each read once (Ouyang et al.);
- the learning rate decays along a cosine to 0 (Stiennon et al.);
- after training, the scores are shifted so that a reference set has mean 0 (Stiennon et al.: the
  reference summaries; Ouyang et al.: the labelers' demonstrations).

Where rexlab departs: the backbones are small (all-MiniLM-L6-v2, 22M parameters, by default, or
SmolLM2-135M's decoder body) where the papers use 1.3B-175B models, and the data are hundreds of
pairs where the papers have tens of thousands, so the learning rate is 1e-4 rather than the papers'
9e-6..1.5e-5 (measured on env=text's 768 simulated pairs over 512 reference responses: correlation of
the learned reward with the gold reward on held-out responses 0.36 at 1e-4, 0.22 at 3e-5, the middle
of Devlin et al. 2019's range for fine-tuning BERT-sized encoders), and batches hold 16 groups (the
papers' 64 suits their 64k comparisons rather than the hundreds to thousands that rexlab's files hold).
The reference set for the shift is every response of the preference data. Pooling follows the
backbone: the mean over tokens for a sentence encoder (how MiniLM was trained), the last token for a
causal LM (as in the papers).
The prompts of `val_fraction` of the rankings are held out, every pair to them, for reward/val_loss and
reward/val_pair_accuracy: no held-out pair shares a prompt (so no response either) with training (a split
by pair or by ranking would leak: preference=synthetic pairs each response with several others, and
files repeat pairs). Before that, `tidy` drops exact repeats of a pair (same prompt, chosen, rejected and
annotator) and pairs of a response with itself, and counts the pairs that come in both orders (ties from the
labeling page, or labelers who disagree), each with a warning.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core.evaluation import true_order_accuracy
from core.interfaces import Capabilities, Environment, PromptTask, RewardModel
from core.run import ResumableLoader, RunContext
from core.schema import ConfigError, LearningRate, NonNegative, PositiveInt, UnitOpen
from core.types import Preferences, Response
from plugins.lm import MINILM, load_encoder, mean_pool
from plugins.response_pairs import Group, preference_groups, split_by_prompt, tidy
from plugins.rewards.ranking_losses import (
    bradley_terry_loss,
    margin_loss,
    plackett_luce_loss,
    soft_bradley_terry_loss,
    total_order,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden (B, L, H), mask (B, L) -> the state of each row's last unmasked token (B, H), with
    padding on either side."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (positions * mask).argmax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


POOLINGS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean": mean_pool, "last": last_token_pool}


class RewardNet(nn.Module):
    """A transformer body and a linear head: (input_ids, attention_mask) (B, L) -> scores (B,)."""

    def __init__(self, backbone: PreTrainedModel, pooling: str) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"reward.pooling={pooling!r}: choose one of {sorted(POOLINGS)}")
        self.backbone, self.pool = backbone, POOLINGS[pooling]
        width = int(backbone.config.hidden_size)
        self.head = nn.Linear(width, 1)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(width + 1))
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(self.pool(hidden, attention_mask)).squeeze(-1)


class Groups(Dataset):
    """Groups of preference pairs as a dataset (item k: group k)."""

    def __init__(self, groups: list[Group]) -> None:
        self.groups = groups

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, k: int) -> Group:
        return self.groups[k]


def encode_pairs(tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each (prompt, response) as a text pair, truncated to max_length, longest part first."""
    encoded = tokenizer(list(prompts), list(responses), truncation="longest_first", max_length=max_length)
    return [list(ids) for ids in encoded["input_ids"]]


def collate(batch: list[Group], encodings: list[list[int]], pad_id: int, margin_of: np.ndarray | None = None,
            listwise: bool = False, probability_of: np.ndarray | None = None) -> dict:
    """Groups -> input_ids, attention_mask (B, L) of their responses (right-padded), pairs (P, 2) as
    rows of those, weights (P,) = 1 / (pairs in the pair's group), margins (P,) (the chosen item's
    `margin_of`, 0 without), and with `listwise` (the Plackett-Luce loss) `lists` (rows best first: a group that
    is one strict ranking as one list, any other group's pairs as lists of 2) with their `list_weights` (1 a
    ranking, 1 / P each pair of a group of P)."""
    rows: list[int] = []
    pairs, weights, lists, list_weights = [], [], [], []
    for items, local in batch:
        order = total_order(local, len(items)) if listwise else None
        if order is not None:
            lists.append(torch.as_tensor(order) + len(rows))
            list_weights.append(1.0)
        elif listwise:
            lists += [torch.as_tensor(pair) + len(rows) for pair in local]
            list_weights += [1.0 / len(local)] * len(local)
        pairs.append(torch.as_tensor(local) + len(rows))
        weights.append(torch.full((len(local),), 1.0 / len(local)))
        rows.extend(int(i) for i in items)
    all_pairs = torch.cat(pairs)
    chosen = np.asarray(rows)[all_pairs[:, 0].numpy()]
    margins = (torch.zeros(len(all_pairs)) if margin_of is None
               else torch.as_tensor(margin_of[chosen], dtype=torch.float32))
    probability = (torch.ones(len(all_pairs)) if probability_of is None
                   else torch.as_tensor(probability_of[chosen], dtype=torch.float32))
    return {**pad([encodings[i] for i in rows], pad_id), "pairs": all_pairs, "weights": torch.cat(weights),
            "margins": margins, "probability": probability, "lists": lists, "list_weights": torch.tensor(list_weights)}


def pad(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Token id lists -> input_ids, attention_mask (B, longest), padded on the right."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for k, s in enumerate(sequences):
        ids[k, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[k, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask}


class BradleyTerryModule(L.LightningModule):
    """Trains a RewardNet on groups of preference pairs; validates on held-out groups."""

    def __init__(self, net: RewardNet, train: list[Group], val: list[Group], collate_fn: Callable, lr: float,
                 weight_decay: float, batch_size: int, total_steps: int, loss: str = "pairwise",
                 soft_labels: bool = False) -> None:
        super().__init__()
        self.loss, self.soft_labels = loss, soft_labels
        self.net, self.train_groups, self.val_groups, self.collate_fn = net, train, val, collate_fn
        self.lr, self.weight_decay, self.batch_size, self.total_steps = lr, weight_decay, batch_size, total_steps
        self.val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def train_dataloader(self) -> DataLoader:
        return ResumableLoader(Groups(self.train_groups), batch_size=self.batch_size, collate_fn=self.collate_fn)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(Groups(self.val_groups), batch_size=32, collate_fn=self.collate_fn)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        scores = self.net(batch["input_ids"], batch["attention_mask"])
        pairs = batch["pairs"]
        if self.loss == "plackett_luce":
            loss = plackett_luce_loss(scores, batch["lists"], batch["list_weights"])
        elif self.loss == "margin":
            loss = margin_loss(scores[pairs[:, 0]], scores[pairs[:, 1]], batch["margins"], batch["weights"])
        elif self.soft_labels:
            loss = soft_bradley_terry_loss(scores[pairs[:, 0]], scores[pairs[:, 1]], batch["probability"],
                                           batch["weights"])
        else:
            loss = bradley_terry_loss(scores[pairs[:, 0]], scores[pairs[:, 1]], batch["weights"])
        self.log("reward/train_loss", loss, prog_bar=True, batch_size=len(pairs), sync_dist=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        scores = self.net(batch["input_ids"], batch["attention_mask"])
        self.val_outputs.append((scores[batch["pairs"][:, 0]], scores[batch["pairs"][:, 1]]))

    def on_validation_epoch_end(self) -> None:
        loss, accuracy = pair_metrics(self.val_outputs)
        self.log("reward/val_loss", loss)
        self.log("reward/val_pair_accuracy", accuracy, prog_bar=True)
        self.val_outputs.clear()


def pair_metrics(outputs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """(mean loss, accuracy) over pairs, from (chosen, rejected) score batches; a tie counts half."""
    chosen, rejected = torch.cat([c for c, _ in outputs]), torch.cat([r for _, r in outputs])
    correct = torch.where(chosen == rejected, 0.5, (chosen > rejected).float())
    return bradley_terry_loss(chosen, rejected).item(), correct.mean().item()


class BradleyTerry(RewardModel):
    """reward=bradley_terry. Fields documented in conf/reward/bradley_terry.yaml.

    Text reward model: `score(prompts, responses)` is the narrow text method; `reward(obs)` takes obs
    (N, 2) of strings, rows (prompt, response), and returns the same scores.
    """

    capabilities = Capabilities(observations=frozenset({"text"}), actions=frozenset({"token"}), needs_preferences=True,
                                data_parallel=True)

    def __init__(self, model: str = MINILM, pooling: Literal["mean", "last"] = "mean", max_length: PositiveInt = 256,
                 lr: LearningRate = 1e-4, weight_decay: NonNegative = 0.0, batch_size: PositiveInt = 16,
                 epochs: PositiveInt = 1, val_fraction: UnitOpen = 0.1, val_checks_per_epoch: PositiveInt = 4,
                 score_batch_size: PositiveInt = 64,
                 loss: Literal["pairwise", "plackett_luce", "margin"] = "pairwise", soft_labels: bool = False) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"reward.pooling={pooling!r}: choose one of {sorted(POOLINGS)}")
        if soft_labels and loss != "pairwise":
            raise ConfigError(f"reward.soft_labels=true is the pairwise loss to a probability; reward.loss={loss} "
                              f"takes hard labels (set reward.loss=pairwise, or reward.soft_labels=false)")
        self.model_name, self.pooling, self.max_length = model, pooling, max_length
        self.lr, self.weight_decay, self.batch_size, self.epochs = lr, weight_decay, batch_size, epochs
        self.val_fraction, self.val_checks, self.score_batch_size = val_fraction, val_checks_per_epoch, score_batch_size
        self.loss, self.soft_labels = loss, soft_labels
        self.net: RewardNet | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.offset = 0.0
        self.pairs_per_second = math.nan  # training throughput of the last fit
        self.baselines: dict[str, float] = {}

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        """Token ids of each (prompt, response) as a text pair, truncated to max_length (longest first)."""
        assert self.tokenizer is not None
        return encode_pairs(self.tokenizer, prompts, responses, self.max_length)

    def fit(self, prefs: Preferences, env: Environment | None, run: RunContext) -> None:
        if not prefs.items or not isinstance(prefs.items[0], Response):
            raise TypeError(f"reward=bradley_terry learns from preferences over text responses, got "
                            f"{type(prefs.items[0]).__name__ if prefs.items else 'no'} items")
        if len(prefs.pairs) == 0:
            raise ValueError("reward=bradley_terry needs at least one preference pair; there are none")
        backbone, self.tokenizer = load_encoder(self.model_name)
        with torch.random.fork_rng():
            torch.manual_seed(run.seed)
            self.net = RewardNet(backbone, self.pooling)
        encodings = self.encode([r.prompt for r in prefs.items], [r.text for r in prefs.items])
        prefs = tidy(prefs, "reward=bradley_terry")
        train, val = self.split(preference_groups(prefs), prefs.items, np.random.default_rng(run.seed))
        steps_per_epoch = math.ceil(len(train) / self.batch_size)
        total = steps_per_epoch * self.epochs
        margin_of = np.array([float(r.info.get("margin", 0.0)) for r in prefs.items])
        if self.loss == "margin" and not margin_of.any():
            log.warning("reward.loss=margin: no preference has a margin (the preference file's \"margin\"), so it is "
                        "the pairwise loss")
        probability_of = np.array([float(r.info.get("probability", 1.0)) for r in prefs.items])
        if self.soft_labels and (probability_of == 1.0).all():
            log.warning("reward.soft_labels=true: no preference has a probability below 1 (a file's \"probability\", "
                        "AI feedback's verdicts), so the labels are hard")
        collate_fn = partial(collate, encodings=encodings, pad_id=int(self.tokenizer.pad_token_id),
                             margin_of=margin_of, listwise=self.loss == "plackett_luce",
                             probability_of=probability_of if self.soft_labels else None)
        module = BradleyTerryModule(self.net, train, val, collate_fn, self.lr, self.weight_decay,
                                    run.per_process(self.batch_size), total, self.loss, self.soft_labels)
        trainer = run.trainer(
            max_steps=total, max_epochs=self.epochs, limit_val_batches=1.0 if val else 0,
            unit=f"reward model batches of {self.batch_size} rankings",
            val_check_interval=max(1, steps_per_epoch // max(1, self.val_checks)),
            log_every_n_steps=max(1, min(50, steps_per_epoch // 10)), num_sanity_val_steps=0)
        if val:  # the untrained model's held-out metrics, the start of the curve
            run.log(self.evaluate(val, collate_fn), 0)
        start = time.perf_counter()
        self.net.train()  # from_pretrained returns eval mode; training uses the backbone's dropout
        run.fit(trainer, module)
        pairs_trained = sum(len(local) for _, local in train) * self.epochs
        self.pairs_per_second = pairs_trained / (time.perf_counter() - start)
        log.info("reward model: %d training pairs x %d epochs at %.1f pairs/s (validation included)",
                 pairs_trained // self.epochs, self.epochs, self.pairs_per_second)
        if val:  # the final model's, whatever step the last validation fell on
            run.log(self.evaluate(val, collate_fn), trainer.global_step)
            kinds = env.prompt_kinds if isinstance(env, PromptTask) else {}
            self.log_true_accuracy(val, prefs.items, encodings, run, trainer.global_step, kinds)
        self.offset = float(np.mean(self._raw_scores(encodings)))

    @torch.no_grad()
    def evaluate(self, groups: list[Group], collate_fn: Callable) -> dict[str, float]:
        """reward/val_loss and reward/val_pair_accuracy of the current model on `groups`."""
        assert self.net is not None
        self.net.eval()
        outputs = []
        device = next(self.net.parameters()).device
        for batch in DataLoader(Groups(groups), batch_size=32, collate_fn=collate_fn):
            scores = self.net(batch["input_ids"].to(device), batch["attention_mask"].to(device)).cpu()
            outputs.append((scores[batch["pairs"][:, 0]], scores[batch["pairs"][:, 1]]))
        loss, accuracy = pair_metrics(outputs)
        return {"reward/val_loss": loss, "reward/val_pair_accuracy": accuracy}

    def log_true_accuracy(self, val: list[Group], items: Sequence[Response], encodings: list[list[int]],
                          run: RunContext, step: int, kinds: Mapping[str, str]) -> None:
        """reward/val_true_pair_accuracy: how often the learned reward orders the held-out pairs' responses as their
        gold rewards do (pairs of equal gold left out), whatever their (perhaps noisy) labels say; where the
        responses have a gold reward (simulated labels). With prompts of several kinds (`kinds`: prompt -> kind,
        e.g. red_team and helpful), also reward/val_true_pair_accuracy/<kind> over each kind's pairs: one model
        may learn one axis and miss the other."""
        used = np.unique(np.concatenate([members for members, _ in val]))
        if any(items[int(k)].gold is None for k in used):
            return
        learned, gold = np.full(len(items), np.nan), np.full(len(items), np.nan)
        learned[used] = self._raw_scores([encodings[int(k)] for k in used])
        gold[used] = [items[int(k)].gold for k in used]
        pairs = np.concatenate([members[local] for members, local in val])
        pair_kinds = np.array([kinds.get(items[int(i)].prompt, "") for i in pairs[:, 0]])
        found = {"reward/val_true_pair_accuracy": true_order_accuracy(pairs, learned, gold)}
        named = sorted(set(pair_kinds) - {""})
        if len(named) > 1:
            for kind in named:
                found[f"reward/val_true_pair_accuracy/{kind}"] = true_order_accuracy(
                    pairs[pair_kinds == kind], learned, gold)
        finite = {name: value for name, value in found.items() if math.isfinite(value)}
        if finite:
            run.log(finite, step)

    def split(self, groups: list[Group], items: Sequence[Response],
              rng: np.random.Generator) -> tuple[list[Group], list[Group]]:
        """(training, held-out) groups, held out by prompt (plugins/response_pairs.py)."""
        return split_by_prompt(groups, items, self.val_fraction, rng, "reward.val_fraction")

    @torch.no_grad()
    def _raw_scores(self, encodings: list[list[int]]) -> np.ndarray:
        assert self.net is not None and self.tokenizer is not None
        self.net.eval()
        device, out = next(self.net.parameters()).device, []
        for start in range(0, len(encodings), self.score_batch_size):
            batch = pad(encodings[start : start + self.score_batch_size], int(self.tokenizer.pad_token_id))
            out.append(self.net(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def to(self, device: torch.device | str) -> BradleyTerry:
        if self.net is not None:
            self.net.to(device)
        return self

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """prompts, responses (N,) -> learned reward of each whole response (N,) float32, shifted so that
        the responses it was trained on average 0."""
        if self.net is None:
            raise RuntimeError("reward=bradley_terry: score() called before fit()")
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        return (self._raw_scores(self.encode(prompts, responses)) - self.offset).astype(np.float32)

    def reward(self, obs: np.ndarray) -> np.ndarray:
        """obs (N, 2) of str, rows (prompt, response) -> score (N,) float32."""
        obs = np.asarray(obs, dtype=object)
        if obs.ndim != 2 or obs.shape[1] != 2:
            raise ValueError(f"reward=bradley_terry scores (prompt, response) rows, shape (N, 2); got {obs.shape}")
        return self.score([str(p) for p in obs[:, 0]], [str(r) for r in obs[:, 1]])

    def state_dict(self) -> dict:
        return {} if self.net is None else {"net": self.net.state_dict(), "offset": self.offset,
                                         "model": self.model_name, "pooling": self.pooling}

    def save(self, folder: Path) -> None:
        """folder/backbone (save_pretrained, with its tokenizer), folder/head.pt and folder/scoring.json (the
        pooling, token limit and score offset): what `load` reads back."""
        if self.net is None or self.tokenizer is None:
            raise RuntimeError("reward=bradley_terry: save() called before fit()")
        folder.mkdir(parents=True, exist_ok=True)
        self.net.backbone.save_pretrained(folder / "backbone")
        self.tokenizer.save_pretrained(folder / "backbone")
        torch.save(self.net.head.state_dict(), folder / "head.pt")
        (folder / "scoring.json").write_text(json.dumps({"pooling": self.pooling, "max_length": self.max_length,
                                                         "offset": self.offset, "model": self.model_name}))

    def load(self, folder: Path) -> None:
        scoring = json.loads((folder / "scoring.json").read_text())
        self.pooling, self.max_length, self.offset = scoring["pooling"], scoring["max_length"], scoring["offset"]
        backbone, self.tokenizer = load_encoder(str(folder / "backbone"))
        self.net = RewardNet(backbone, self.pooling)
        self.net.head.load_state_dict(torch.load(folder / "head.pt", map_location="cpu"))
        self.net.eval()
