"""Losses of a reward model over preferences, as plain functions of the scores (reward=bradley_terry's `loss`).

- pairwise (Bradley-Terry; Stiennon et al. 2020, Ouyang et al. 2022): -log sigmoid(r_chosen - r_rejected) a pair;
  a ranking of K gives its K choose 2 pairs, weighted 1 / (K choose 2) so that each ranking counts once.
- plackett_luce (Plackett 1975, Luce 1959): a ranking pi of K as one listwise likelihood,
  -sum_k log softmax(r_pi(k), ..., r_pi(K))[0], the chance of drawing the items best first; on 2 items it is
  the pairwise loss.
- margin (Touvron et al. 2023, Llama 2): -log sigmoid(r_chosen - r_rejected - m), m the pair's margin (how much
  better, as its preference file says; 0 where it says nothing).
- soft labels (reward.soft_labels; Bai et al. 2022's AI feedback, Christiano et al. 2017's uniform "equally good"):
  the binary cross-entropy of sigmoid(r_chosen - r_rejected) to the label's probability p that the chosen is
  better, -p log sigmoid(d) - (1 - p) log sigmoid(-d); p = 1 is the pairwise loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """chosen, rejected (P,): scores of the preferred and the other response of each pair; weights (P,)
    or None -> the weighted mean of -log sigmoid(chosen - rejected), a scalar."""
    losses = F.softplus(rejected - chosen)
    return losses.mean() if weights is None else (losses * weights).sum() / weights.sum()


def soft_bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, probability: torch.Tensor,
                            weights: torch.Tensor | None = None) -> torch.Tensor:
    """As bradley_terry_loss, to soft labels: probability (P,) that each pair's chosen response is the better ->
    the weighted mean of the binary cross-entropy -p log sigmoid(d) - (1 - p) log sigmoid(-d), d = chosen - rejected."""
    d = chosen - rejected
    losses = probability * F.softplus(-d) + (1.0 - probability) * F.softplus(d)
    return losses.mean() if weights is None else (losses * weights).sum() / weights.sum()


def margin_loss(chosen: torch.Tensor, rejected: torch.Tensor, margins: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """As bradley_terry_loss with each pair's margin (P,) subtracted from its score gap."""
    return bradley_terry_loss(chosen - margins, rejected, weights)


def plackett_luce_loss(scores: torch.Tensor, rankings: Sequence[torch.Tensor],
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """scores (N,); rankings: index tensors into scores, best first (K_r >= 2 each); weights (R,) or None ->
    the weighted mean over rankings of their negative Plackett-Luce log-likelihood, a scalar."""
    losses = []
    for ranking in rankings:
        s = scores[ranking]
        tails = torch.logcumsumexp(s.flip(0), 0).flip(0)  # log sum_{j >= k} exp(s_j)
        losses.append((tails[:-1] - s[:-1]).sum())
    stacked = torch.stack(losses)
    return stacked.mean() if weights is None else (stacked * weights).sum() / weights.sum()


def total_order(pairs: np.ndarray, size: int) -> np.ndarray | None:
    """The ranking (positions 0..size-1, best first) that pairs (P, 2) of (preferred, other) positions state when
    they are every one of the size choose 2 pairs of one strict order (a ranking line); None otherwise."""
    if len(pairs) != size * (size - 1) // 2:
        return None
    wins = np.bincount(pairs[:, 0], minlength=size)
    order = np.argsort(-wins, kind="stable")
    if sorted(wins) != list(range(size)):
        return None
    rank = np.empty(size, dtype=np.int64)
    rank[order] = np.arange(size)
    return order if all(rank[i] < rank[j] for i, j in pairs) else None
