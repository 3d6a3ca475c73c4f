"""Bradley-Terry reward model training throughput (preference pairs/s) on a 200-pair file, next to two
peers with the same backbone, tokens, batch size (16 pairs), learning rate and epochs, in the same run:
- a plain PyTorch loop (no Lightning, no validation) doing the same forward and backward passes on
  the same batches;
- TRL's RewardTrainer (the `bench` extra, never a runtime dependency; without trl installed the
  script says so and skips it).
Backbones: a tiny random BERT (the unit test's) and all-MiniLM-L6-v2 (the default).

    OMP_NUM_THREADS=1 .venv/bin/python bench/text_reward_throughput.py [--pairs 200]

Only training is timed, with perf_counter, model loading excluded: reward=bradley_terry's fit (its
Lightning loop including its 4 held-out validations per epoch), the plain loop, and the call to TRL's
`trainer.train()` (the wall time around it; the pairs/s implied by the train_runtime TRL reports, which
leaves out some of train()'s setup, is printed beside it).

What differs between the peers:
- The network. rexlab and the plain loop train rexlab's RewardNet: the backbone (AutoModel) and a
  linear head on the mean of the token states, initialised N(0, 1/(d+1)). TRL trains a sequence
  classification model with num_labels=1, AutoModelForSequenceClassification from the same folder:
  the same transformer weights, but it scores BERT's pooler output (dense + tanh of the [CLS] state,
  pretrained weights for MiniLM, random for the tiny BERT) through dropout and a new linear head
  initialised N(0, 0.02^2). So pooling and head differ; the transformer body and its cost do not.
- The data. rexlab and TRL train on the same 90% of the pairs (reward=bradley_terry's split with
  seed 0) and are scored on the same held-out 10%; the plain loop trains on all pairs. Every response
  is tokenised as rexlab does, tokenizer(prompt, response, truncation="longest_first", max_length=256),
  and handed to TRL pre-tokenised (chosen_ids, rejected_ids): TRL's text path would join prompt and
  response into one segment and append an EOS token, which BERT's tokenizer does not have.
- The settings. RewardConfig is set to rexlab's: float32 (TRL's default is bf16), no gradient
  checkpointing (TRL's default is on), dropout kept (TRL's default disables it), no gradient clipping
  (transformers clips at 1.0), torch.optim.AdamW (transformers' default is the fused kernel), cosine
  decay to 0 without warmup, no weight decay, and no evaluation, saving, logging or report_to.
- The loss. rexlab averages a ranking's pairs as one batch element; the file here holds only single
  pairs, so both compute the mean of -log sigmoid(r_chosen - r_rejected) over 16 pairs per step.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from core.run import RunContext  # noqa: E402
from core.tracking import NullTracker  # noqa: E402
from plugins.lm import MINILM, load_encoder, load_tokenizer, resolve, tiny_encoder  # noqa: E402
from plugins.preferences.file import read_preference_file  # noqa: E402
from plugins.rewards.bradley_terry import (  # noqa: E402
    BradleyTerry,
    Group,
    Groups,
    RewardNet,
    bradley_terry_loss,
    collate,
    encode_pairs,
    pair_metrics,
    preference_groups,
)
from tests.plugins.text_data import sentiment_records, write_jsonl  # noqa: E402


def encode(tokenizer, prefs) -> list[list[int]]:
    """Token ids of every response as reward=bradley_terry reads it, at its default max_length."""
    return encode_pairs(tokenizer, [r.prompt for r in prefs.items], [r.text for r in prefs.items],
                        BradleyTerry().max_length)


def rexlab_split(prefs) -> tuple[list[Group], list[Group]]:
    """The training and held-out groups of reward=bradley_terry's fit with seed 0 (its defaults)."""
    return BradleyTerry().split(preference_groups(prefs), prefs.items, np.random.default_rng(0))


@torch.no_grad()
def held_out_accuracy(score, groups: list[Group], encodings: list[list[int]], pad_id: int) -> float:
    """Pair accuracy (ties half) of score(input_ids, attention_mask) -> (B,) on the pairs of `groups`."""
    outputs = []
    for batch in DataLoader(Groups(groups), batch_size=32,
                            collate_fn=partial(collate, encodings=encodings, pad_id=pad_id)):
        scores = score(batch["input_ids"], batch["attention_mask"])
        outputs.append((scores[batch["pairs"][:, 0]], scores[batch["pairs"][:, 1]]))
    return pair_metrics(outputs)[1]


def plain_loop(model: str, prefs, batch_size: int, lr: float, epochs: int) -> float:
    """Pairs/s of a bare PyTorch loop: same network, tokenisation, batches and loss."""
    torch.manual_seed(0)
    backbone, tokenizer = load_encoder(model)
    net = RewardNet(backbone, "mean").train()
    encodings = encode(tokenizer, prefs)
    groups = preference_groups(prefs)
    loader = DataLoader(Groups(groups), batch_size=batch_size, shuffle=True,
                        collate_fn=partial(collate, encodings=encodings, pad_id=int(tokenizer.pad_token_id)))
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            scores = net(batch["input_ids"], batch["attention_mask"])
            loss = bradley_terry_loss(scores[batch["pairs"][:, 0]], scores[batch["pairs"][:, 1]], batch["weights"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return len(prefs.pairs) * epochs / (time.perf_counter() - start)


def rexlab(model: str, prefs, batch_size: int, lr: float, epochs: int, tmp: Path) -> tuple[float, float, float]:
    """(pairs/s including validation, held-out accuracy before, after) of reward=bradley_terry."""
    L.seed_everything(0, verbose=False)
    tracker = NullTracker()
    rm = BradleyTerry(model=model, lr=lr, batch_size=batch_size, epochs=epochs)
    rm.fit(prefs, None, RunContext(0, tmp, tracker, progress=False))
    accuracy = tracker.history["reward/val_pair_accuracy"]
    return rm.pairs_per_second, accuracy[0][1], accuracy[-1][1]


def trl_reward_trainer(model: str, prefs, batch_size: int, lr: float, epochs: int,
                       tmp: Path) -> tuple[float, float, float, float]:
    """(pairs/s, pairs/s by TRL's own train_runtime, held-out accuracy before, after) of TRL's
    RewardTrainer on reward=bradley_terry's training pairs, with rexlab's settings (see the module
    docstring)."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, PrinterCallback
    from trl import RewardConfig, RewardTrainer

    tokenizer = load_tokenizer(model)
    encodings = encode(tokenizer, prefs)
    train, val = rexlab_split(prefs)
    pairs = [(int(items[a]), int(items[b])) for items, local in train for a, b in local]
    data = Dataset.from_dict({"chosen_ids": [encodings[c] for c, _ in pairs],
                              "rejected_ids": [encodings[r] for _, r in pairs]})
    torch.manual_seed(0)  # the new head's initialisation
    net = AutoModelForSequenceClassification.from_pretrained(resolve(model), num_labels=1, dtype=torch.float32)
    config = RewardConfig(
        output_dir=str(tmp / "trl"), per_device_train_batch_size=batch_size, learning_rate=lr,
        num_train_epochs=epochs, lr_scheduler_type="cosine", weight_decay=0.0, optim="adamw_torch",
        max_grad_norm=0.0, bf16=False, activation_checkpointing=False, disable_dropout=False, max_length=None,
        use_cpu=True, dataloader_pin_memory=False, eval_strategy="no", save_strategy="no",
        logging_strategy="no", report_to="none", disable_tqdm=True, seed=0)
    trainer = RewardTrainer(model=net, args=config, train_dataset=data, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # it prints the final metrics to stdout even without logging

    def score(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return trainer.model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1)

    pad_id = int(tokenizer.pad_token_id)
    trainer.model.eval()
    before = held_out_accuracy(score, val, encodings, pad_id)
    start = time.perf_counter()
    result = trainer.train()
    pairs_per_second = len(pairs) * epochs / (time.perf_counter() - start)
    own_figure = len(pairs) * epochs / result.metrics["train_runtime"]
    trainer.model.eval()
    return pairs_per_second, own_figure, before, held_out_accuracy(score, val, encodings, pad_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    prefs = read_preference_file(write_jsonl(tmp / "prefs.jsonl", sentiment_records(args.pairs, ranking_every=0)))
    tiny, tokenizer = tiny_encoder(hidden_size=32, num_layers=2, num_heads=4)
    tiny.save_pretrained(tmp / "tiny")
    tokenizer.save_pretrained(tmp / "tiny")
    train, val = rexlab_split(prefs)
    print(f"{len(prefs.pairs)} pairs ({sum(len(local) for _, local in train)} in reward=bradley_terry's training "
          f"split, {sum(len(local) for _, local in val)} held out); torch threads {torch.get_num_threads()}",
          flush=True)
    has_trl = importlib.util.find_spec("trl") is not None
    if has_trl:
        trl_version = importlib.metadata.version("trl")
    else:
        print("TRL not installed: pip install -e '.[bench]'", flush=True)
    setups = (("tiny BERT (test)", str(tmp / "tiny"), 1e-3, 3), ("all-MiniLM-L6-v2", MINILM, 3e-5, 1))
    for name, model, lr, epochs in setups:
        start = time.perf_counter()
        load_encoder(model)
        load_s = time.perf_counter() - start
        ours, before, after = rexlab(model, prefs, 16, lr, epochs, tmp)
        peer = plain_loop(model, prefs, 16, lr, epochs)
        print(f"{name:18s} load {load_s:5.2f} s | reward=bradley_terry {ours:7.1f} pairs/s (validation included), "
              f"held-out accuracy {before:.2f} -> {after:.2f} | plain torch loop {peer:7.1f} pairs/s "
              f"| rexlab/torch {ours / peer:.2f}", flush=True)
        if has_trl:
            theirs, own_figure, trl_before, trl_after = trl_reward_trainer(model, prefs, 16, lr, epochs, tmp)
            print(f"{'':18s} TRL {trl_version} RewardTrainer {theirs:7.1f} pairs/s ({own_figure:.1f} by its "
                  f"train_runtime), held-out accuracy {trl_before:.2f} -> {trl_after:.2f} "
                  f"| rexlab/TRL {ours / theirs:.2f}", flush=True)


if __name__ == "__main__":
    main()
