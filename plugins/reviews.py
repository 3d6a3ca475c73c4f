"""The default text task, "write a positive review": its bundled data and its gold reward.

Data (plugins/data/): review_prompts.jsonl (80 review openings, {"prompt": str} lines),
review_demos.jsonl (40 positive reviews, {"prompt": str, "response": str} lines, for SFT) and
review_corpus.txt (paragraphs separated by blank lines, for pretraining).

Gold reward: VADER sentiment (Hutto & Gilbert, ICWSM 2014). VADER scores a text with a hand-made
lexicon of valence (-4..4 per word) and rules for negation, intensifiers, "but", capitals and
punctuation; its compound score maps the sum to [-1, 1] (x / sqrt(x^2 + 15)). It needs no model: the
lexicon ships inside the vaderSentiment package.
Positive sentiment as the gold reward follows the mock sentiment task of Ziegler et al. 2019
(whose gold reward is a trained sentiment classifier; VADER is rexlab's offline stand-in).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from core.interfaces import GoldScorer

DATA = Path(__file__).resolve().parent / "data"
PROMPTS = DATA / "review_prompts.jsonl"
DEMONSTRATIONS = DATA / "review_demos.jsonl"
CORPUS = DATA / "review_corpus.txt"


@cache
def vader() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()  # reads the lexicon file once


def gold_sentiment(texts: Sequence[str]) -> np.ndarray:
    """texts (N,) -> VADER compound scores (N,) float64 in [-1, 1]; > 0 positive, 0 neutral or empty."""
    if isinstance(texts, str):
        raise TypeError("gold_sentiment takes a sequence of texts, not one string")
    analyzer = vader()
    return np.array([analyzer.polarity_scores(t)["compound"] for t in texts], dtype=np.float64).reshape(len(texts))


class SentimentGold(GoldScorer):
    """The review task's gold (env.gold's default): VADER compound sentiment of the response, whatever the prompt."""

    label = "VADER compound"
    default_prompts = PROMPTS
    continuation = True  # review openings to continue (measured: the reference's gold is the same either way)

    def score(self, prompts: Sequence[str], responses: Sequence[str], kinds: Sequence[str | None]) -> np.ndarray:
        return gold_sentiment(responses)
