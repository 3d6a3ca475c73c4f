"""reward=bradley_terry on tiny random transformers: the loss, the pooling, and that it learns."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from core.run import RunContext
from core.schema import ConfigError
from core.tracking import NullTracker
from core.types import Preferences, Response, Trajectory
from plugins.lm import mean_pool, tiny_encoder
from plugins.preferences.file import read_preference_file
from plugins.response_pairs import preference_groups, tidy
from plugins.rewards.bradley_terry import (
    BradleyTerry,
    bradley_terry_loss,
    collate,
    last_token_pool,
)
from plugins.rewards.trex import TREX
from tests.plugins.text_data import review, sentiment_records, write_jsonl


def test_loss_is_minus_log_sigmoid_of_the_score_gap_and_weights_average_groups() -> None:
    chosen, rejected = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 3.0])
    per_pair = -torch.log(torch.sigmoid(chosen - rejected))
    assert torch.isclose(bradley_terry_loss(chosen, rejected), per_pair.mean())
    weights = torch.tensor([1.0, 0.5, 0.5])  # a single pair, then a group of two
    expected = (per_pair[0] + per_pair[1:].mean()) / 2
    assert torch.isclose(bradley_terry_loss(chosen, rejected, weights), expected)


def test_pooling_ignores_padding_on_either_side() -> None:
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_token_pool(hidden, right).flatten().tolist() == [1.0, 7.0]
    assert last_token_pool(hidden, left).flatten().tolist() == [3.0, 7.0]
    assert mean_pool(hidden, right).flatten().tolist() == [0.5, 5.5]


def test_a_ranking_is_one_group_whose_pairs_share_one_batch_element() -> None:
    items = [Response("p", t) for t in ("a", "b", "c", "d", "e")]
    prefs = Preferences(items, np.array([[3, 4], [0, 1], [0, 2], [1, 2]]))
    groups = sorted(preference_groups(prefs), key=lambda g: len(g[0]))
    assert [list(g[0]) for g in groups] == [[3, 4], [0, 1, 2]]
    batch = collate(groups, encodings=[[5], [6, 7], [8], [9, 9, 9], [1]], pad_id=0)
    assert batch["input_ids"].tolist() == [[9, 9, 9], [1, 0, 0], [5, 0, 0], [6, 7, 0], [8, 0, 0]]
    assert batch["pairs"].tolist() == [[0, 1], [2, 3], [2, 4], [3, 4]]
    assert torch.allclose(batch["weights"], torch.tensor([1.0, 1 / 3, 1 / 3, 1 / 3]))


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random BERT with MiniLM's tokenizer, saved as a folder: loaded by the real from_pretrained path."""
    folder = tmp_path_factory.mktemp("tiny_bert")
    model, tokenizer = tiny_encoder(hidden_size=32, num_layers=2, num_heads=4, seed=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize(("loss", "reached", "gained"), [("pairwise", 0.85, 0.2), ("plackett_luce", 0.75, 0.15)])
def test_bradley_terry_learns_to_prefer_positive_reviews_on_held_out_rankings(tmp_path: Path, tiny_backbone: str,
                                                                              loss: str, reached: float,
                                                                              gained: float) -> None:
    """(Measured, seed 0: pairwise 0.62 -> 0.88 held-out accuracy, Plackett-Luce 0.62 -> 0.79 in these 3 epochs.)"""
    prefs = read_preference_file(write_jsonl(tmp_path / "prefs.jsonl", sentiment_records(100, seed=0)))
    L.seed_everything(0)
    tracker = NullTracker()
    model = BradleyTerry(model=tiny_backbone, pooling="mean", lr=1e-3, batch_size=8, epochs=3, val_fraction=0.2,
                         loss=loss)  # type: ignore[arg-type]
    model.fit(prefs, None, RunContext(0, tmp_path, tracker, progress=False))
    accuracy = [v for _, v in tracker.history["reward/val_pair_accuracy"]]
    val_loss = [v for _, v in tracker.history["reward/val_loss"]]
    assert accuracy[-1] >= reached and accuracy[-1] >= accuracy[0] + gained, accuracy
    assert val_loss[-1] < val_loss[0] and val_loss[-1] < np.log(2), val_loss
    assert tracker.history["reward/train_loss"]
    train_scores = model.score([r.prompt for r in prefs.items], [r.text for r in prefs.items])
    assert abs(train_scores.mean()) < 1e-4  # shifted so the responses it saw average 0
    new = model.score(["Your opinion:"] * 2, ["a lovely film with a wonderful ending", "a dreadful boring film"])
    assert new.dtype == np.float32 and new[0] > new[1]
    rows = np.array([["Your opinion:", "a lovely film with a wonderful ending"]], dtype=object)
    np.testing.assert_allclose(model.reward(rows), new[:1], rtol=1e-5)


def test_bradley_terry_refuses_trajectories_and_single_group_hold_outs(tmp_path: Path, tiny_backbone: str) -> None:
    run = RunContext(0, tmp_path, NullTracker(), progress=False)
    trajectories = [Trajectory(np.zeros((2, 1)), np.zeros(2), np.zeros(2)) for _ in range(2)]
    with pytest.raises(TypeError, match="text responses, got Trajectory"):
        BradleyTerry(model=tiny_backbone).fit(Preferences(trajectories, np.array([[0, 1]])), None, run)
    one_ranking = Preferences([Response("p", "a"), Response("p", "b")], np.array([[0, 1]]))
    with pytest.raises(ValueError, match="val_fraction=0"):
        BradleyTerry(model=tiny_backbone).fit(one_ranking, None, run)
    with pytest.raises(ValueError, match="reward.pooling='max'"):
        BradleyTerry(pooling="max")  # type: ignore[arg-type]


def test_control_reward_models_refuse_to_score_text() -> None:
    with pytest.raises(NotImplementedError, match="TREX scores observations, not text"):
        TREX().score(["p"], ["r"])


def test_held_out_pairs_share_no_prompt_or_response_with_training(caplog: pytest.LogCaptureFixture) -> None:
    """As preference=synthetic pairs them: each response to a prompt against each other one, as separate items,
    with a repeated pair, a response against itself and a pair both ways (a tie) among them."""
    rng = np.random.default_rng(0)
    items, pairs = [], []
    for p in range(30):
        texts = [f"response {k}" for k in range(4)]  # the same texts under every prompt
        for a in range(4):
            for b in range(a + 1, 4):
                items += [Response(f"prompt {p}", texts[a]), Response(f"prompt {p}", texts[b])]
                first, second = len(items) - 2, len(items) - 1
                pairs.append((first, second) if rng.random() < 0.5 else (second, first))
    items += [Response("prompt 0", "response 0"), Response("prompt 0", "response 0")]
    pairs += [pairs[0], pairs[1], (len(items) - 2, len(items) - 1), tuple(reversed(pairs[2]))]
    with caplog.at_level("WARNING"):
        prefs = tidy(Preferences(items, np.array(pairs)), "reward=bradley_terry")
    assert len(prefs.pairs) == 30 * 6 + 1  # the two repeats and the self-pair dropped, the reversed pair kept
    assert "2 of 184 preference pairs repeat" in caplog.text and "1 preference pair(s) compare a response with itself" \
        in caplog.text and "2 preference pairs also appear the other way round" in caplog.text
    train, val = BradleyTerry(val_fraction=0.2).split(preference_groups(prefs), prefs.items, np.random.default_rng(0))
    def shown(groups: list) -> set[tuple[str, str]]:
        return {(items[int(i)].prompt, items[int(i)].text) for members, _ in groups for i in members}

    assert not {p for p, _ in shown(train)} & {p for p, _ in shown(val)}  # no prompt, so no response, on both sides
    groups = preference_groups(prefs)  # (a split by pair, as before, would leak: the same responses on both sides)
    by_pair = np.random.default_rng(0).permutation(len(groups))
    assert shown([groups[k] for k in by_pair[:36]]) & shown([groups[k] for k in by_pair[36:]])
    held = sum(len(local) for _, local in val) / len(prefs.pairs)
    assert 0.15 <= held <= 0.25, held  # about val_fraction of the pairs


def test_repeats_of_one_annotator_are_used_once_and_agreeing_annotators_both_count() -> None:
    def pair(who: str | None) -> list[Response]:
        info = {"annotator": who} if who else {}
        return [Response("p", "good", info=dict(info)), Response("p", "bad", info=dict(info))]

    items = pair("ada") + pair("bob") + pair("ada") + pair(None) + pair(None)
    prefs = tidy(Preferences(items, np.array([[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]])), "reward=bradley_terry")
    np.testing.assert_array_equal(prefs.pairs, [[0, 1], [2, 3], [6, 7]])


def test_soft_labels_reach_the_loss_the_reward_model_learns_the_labels_odds_not_certainty(
        tmp_path: Path, tiny_backbone: str) -> None:
    """Every pair says P(chosen better) = 0.7: with soft labels the learned gap settles at log(0.7 / 0.3) = 0.85;
    read as hard labels it grows without bound."""
    records = [{**r, "probability": 0.7} for r in sentiment_records(60, seed=0, ranking_every=0)]
    prefs = read_preference_file(write_jsonl(tmp_path / "prefs.jsonl", records))
    gaps = {}
    for soft in (False, True):
        L.seed_everything(0)
        model = BradleyTerry(model=tiny_backbone, lr=2e-3, batch_size=8, epochs=12, val_fraction=0, soft_labels=soft)
        model.fit(prefs, None, RunContext(0, tmp_path, NullTracker(), progress=False))
        scores = model.score([r.prompt for r in prefs.items], [r.text for r in prefs.items])
        gaps[soft] = float(np.mean(scores[prefs.pairs[:, 0]] - scores[prefs.pairs[:, 1]]))
    assert abs(gaps[True] - np.log(0.7 / 0.3)) < 0.2 and gaps[False] > 3.0, gaps  # (measured: 0.854 and 13.6)
    with pytest.raises(ConfigError, match="reward.soft_labels=true is the pairwise loss"):
        BradleyTerry(soft_labels=True, loss="plackett_luce")


def test_held_out_accuracy_is_also_given_per_prompt_kind(tmp_path: Path, tiny_backbone: str, tiny_lm_dir: str) -> None:
    """Two kinds of prompt whose gold disagrees: on "asks" prompts the gold is sentiment, on "dares" prompts its
    opposite, while every label follows sentiment. The model learns sentiment, so it orders the held-out "asks"
    pairs as their gold does and the "dares" pairs the other way; the pooled accuracy averages that away."""
    from plugins.envs.text import TextEnv

    rng = np.random.default_rng(0)
    kinds = {f"asks {k}": "asks" for k in range(20)} | {f"dares {k}": "dares" for k in range(20)}
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p, "kind": kind} for p, kind in kinds.items()])
    items, pairs = [], []
    for prompt, kind in kinds.items():
        for _ in range(3):
            good, bad = review(rng, 2, 0), review(rng, 0, 2)
            sign = 1.0 if kind == "asks" else -1.0
            items += [Response(prompt, good, gold=sign), Response(prompt, bad, gold=-sign)]
            pairs.append((len(items) - 2, len(items) - 1))
    env = TextEnv(model=tiny_lm_dir, prompts=str(prompts), max_new_tokens=4)
    tracker = NullTracker()
    L.seed_everything(0)
    BradleyTerry(model=tiny_backbone, lr=1e-3, batch_size=4, epochs=4, val_fraction=0.3).fit(
        Preferences(items, np.array(pairs)), env, RunContext(0, tmp_path, tracker, progress=False))
    final = {name: values[-1][1] for name, values in tracker.history.items()}
    assert final["reward/val_true_pair_accuracy/asks"] >= 0.8, final
    assert final["reward/val_true_pair_accuracy/dares"] <= 0.2, final
    assert 0.2 < final["reward/val_true_pair_accuracy"] < 0.8, final
