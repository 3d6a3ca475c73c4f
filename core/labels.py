"""The simulated labeler's noise model, shared by preference=synthetic and preference=online.

Noise models: "boltzmann" (Boltzmann-rational: P(i preferred) = sigmoid((R_i - R_j) / T), as the
synthetic labels of Christiano et al. 2017 and the Bradley-Terry model assume) or "flip" (the truly
better item is chosen, then the label flipped with probability p). `calibrate` finds the noise scale
at which the expected agreement of the labels with the true order equals a target. With several
annotators, each has its own noise (the shared scale times a log-normal factor) and the label is
their majority vote.
"""

from __future__ import annotations

import numpy as np


def correct_probability(gaps: np.ndarray, scale: float, noise: str) -> np.ndarray:
    """P(an annotator labels the truly better fragment as better), gaps = |R_i - R_j| > 0 (P,).
    scale: the temperature (boltzmann) or flip probability (flip)."""
    if noise == "boltzmann":
        return 1.0 / (1.0 + np.exp(-gaps / max(scale, 1e-12)))
    return np.full_like(gaps, 1.0 - scale)


def majority_correct(p: np.ndarray) -> np.ndarray:
    """P(a strict majority is correct) for annotators with correct-probabilities p (P, K), ties
    broken by a fair coin: exact, by dynamic programming over the number of correct votes."""
    count = np.zeros((p.shape[0], p.shape[1] + 1))
    count[:, 0] = 1.0
    for k in range(p.shape[1]):
        count[:, 1:] = count[:, 1:] * (1 - p[:, k : k + 1]) + count[:, :-1] * p[:, k : k + 1]
        count[:, 0] *= 1 - p[:, k]
    votes = np.arange(p.shape[1] + 1)
    wins = count[:, votes * 2 > p.shape[1]].sum(1)
    return wins + 0.5 * count[:, votes * 2 == p.shape[1]].sum(1)


def annotator_scales(scale: float, factors: np.ndarray, noise: str) -> np.ndarray:
    """Each annotator's temperature or flip rate: the shared scale times its factor (flip rates
    capped at 0.5, where a label carries no information)."""
    return np.minimum(scale * factors, 0.5) if noise == "flip" else scale * factors


def calibrate(gaps: np.ndarray, factors: np.ndarray, target: float, noise: str) -> float:
    """The shared scale s (annotator k uses s * factors[k]) whose expected majority agreement over
    the pairs with true-return gaps `gaps` equals `target`, by bisection (agreement falls with s)."""
    def agreement(scale: float) -> float:
        p = np.stack([correct_probability(gaps, s, noise) for s in annotator_scales(scale, factors, noise)], 1)
        return float(majority_correct(p).mean())

    lo, hi = 0.0, (0.5 / factors.max() if noise == "flip" else 1.0)
    if noise == "boltzmann":
        while agreement(hi) > target:
            hi *= 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if agreement(mid) > target else (lo, mid)
    return 0.5 * (lo + hi)


def annotator_factors(annotators: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    """Each annotator's noise factor (K,): log-normal with sigma `spread`; 1 for a lone annotator."""
    return np.exp(rng.normal(0.0, spread, annotators)) if annotators > 1 else np.ones(1)


def label(first: np.ndarray, second: np.ndarray, scales: np.ndarray, noise: str,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Simulated labels of P pairs whose items have true returns `first`, `second` (P,): annotators
    with noise scales `scales` (K,) vote, the majority decides (a tie of votes: a fair coin).
    Returns first_wins (P,), the label, and correct (P,), whether it agrees with the true order;
    pairs of equal true return get a fair coin as their label (as a labeler's "equally good" would,
    in expectation, under the Bradley-Terry loss)."""
    gaps = np.abs(first - second)
    votes = np.stack([rng.random(len(gaps)) < correct_probability(gaps, s, noise) for s in scales], 1)
    correct = votes.sum(1) * 2 > len(scales)
    ties = votes.sum(1) * 2 == len(scales)
    correct = np.where(ties, rng.random(len(correct)) < 0.5, correct)
    first_wins = np.where(first != second, correct == (first > second), rng.random(len(correct)) < 0.5)
    return first_wins, correct
