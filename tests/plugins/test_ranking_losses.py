"""The reward model's losses (plugins/rewards/ranking_losses.py): Plackett-Luce on 2 items is Bradley-Terry, a
K-way ranking's listwise likelihood by hand, the margin loss, which groups are one ranking, and the preference
file's margins reaching the batch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from plugins.preferences.file import read_preference_file
from plugins.response_pairs import preference_groups
from plugins.rewards.bradley_terry import collate
from plugins.rewards.ranking_losses import bradley_terry_loss, margin_loss, plackett_luce_loss, total_order
from tests.plugins.text_data import write_jsonl


def test_plackett_luce_on_two_items_is_bradley_terry_and_on_three_is_the_listwise_likelihood() -> None:
    scores = torch.tensor([0.3, -1.2, 2.0])
    pairs = [torch.tensor([0, 1]), torch.tensor([2, 0])]
    expected = bradley_terry_loss(scores[[0, 2]], scores[[1, 0]])
    torch.testing.assert_close(plackett_luce_loss(scores, pairs), expected)
    s = scores.tolist()  # ranking 2 > 0 > 1: P = e^s2/(e^s2+e^s0+e^s1) * e^s0/(e^s0+e^s1)
    by_hand = -(s[2] - math.log(sum(math.exp(x) for x in s)) + s[0] - math.log(math.exp(s[0]) + math.exp(s[1])))
    assert math.isclose(plackett_luce_loss(scores, [torch.tensor([2, 0, 1])]).item(), by_hand, rel_tol=1e-6)
    weighted = plackett_luce_loss(scores, pairs, torch.tensor([3.0, 1.0]))
    assert math.isclose(weighted.item(), (3 * math.log1p(math.exp(-1.5)) + math.log1p(math.exp(-1.7))) / 4,
                        rel_tol=1e-6)


def test_the_margin_loss_asks_a_gap_of_at_least_the_margin() -> None:
    chosen, rejected = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])
    torch.testing.assert_close(margin_loss(chosen, rejected, torch.zeros(2)), bradley_terry_loss(chosen, rejected))
    assert math.isclose(margin_loss(chosen, rejected, torch.tensor([1.0, 2.0])).item(), math.log(2), rel_tol=1e-6)


def test_a_group_is_one_ranking_only_when_its_pairs_are_all_of_one_strict_order() -> None:
    np.testing.assert_array_equal(total_order(np.array([[2, 0], [2, 1], [0, 1]]), 3), [2, 0, 1])
    assert total_order(np.array([[0, 1], [1, 0]]), 2) is None  # a tie, both ways
    assert total_order(np.array([[0, 1], [1, 2]]), 3) is None  # a chain, not every pair
    assert total_order(np.array([[0, 1], [1, 2], [2, 0]]), 3) is None  # a cycle


def test_the_files_margins_and_rankings_reach_the_batch(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": "p", "chosen": "great", "rejected": "poor", "margin": 2.5},
        {"prompt": "q", "chosen": "fine", "rejected": "bad"},
        {"prompt": "r", "responses": ["ok", "best", "worst"], "ranking": [1, 0, 2]}])
    prefs = read_preference_file(path)
    margin_of = np.array([r.info.get("margin", 0.0) for r in prefs.items])
    groups = preference_groups(prefs)
    batch = collate(groups, [[1, 2]] * len(prefs.items), pad_id=0, margin_of=margin_of, listwise=True)
    assert sorted(batch["margins"].tolist()) == [0.0, 0.0, 0.0, 0.0, 2.5]
    lists = sorted(len(r) for r in batch["lists"])
    assert lists == [2, 2, 3] and batch["list_weights"].tolist() == [1.0, 1.0, 1.0]  # the ranking as one list


def test_soft_labels_are_the_cross_entropy_to_the_probability_and_hard_labels_their_p_1_case() -> None:
    from plugins.rewards.ranking_losses import soft_bradley_terry_loss

    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    torch.testing.assert_close(soft_bradley_terry_loss(chosen, rejected, torch.ones(3)),
                               bradley_terry_loss(chosen, rejected))
    gap = torch.zeros(1, requires_grad=True)  # a tie's loss is flat where the two scores agree
    soft_bradley_terry_loss(gap, torch.zeros(1), torch.tensor([0.5])).backward()
    assert gap.grad is not None and gap.grad.abs().item() < 1e-7
    p = torch.tensor([0.7])
    d = torch.linspace(-3, 3, 601)
    losses = torch.stack([soft_bradley_terry_loss(x[None], torch.zeros(1), p) for x in d])
    assert abs(d[losses.argmin()].item() - math.log(0.7 / 0.3)) < 0.02  # minimised at the label's log-odds
