from __future__ import annotations

import numpy as np
import pytest

from plugins.reviews import gold_sentiment


def test_vader_scores_positive_above_neutral_above_negative_in_minus_one_to_one() -> None:
    scores = gold_sentiment(["What a wonderful, happy day!", "The table is brown.", "This is awful and sad.",
                             "not good", ""])
    assert scores.shape == (5,) and scores.dtype == np.float64
    assert scores[0] > 0.5 and scores[1] == 0.0 and scores[2] < -0.5 and scores[4] == 0.0
    assert scores[3] < 0  # negation flips "good"
    assert np.all(np.abs(scores) <= 1.0)
    assert gold_sentiment([]).shape == (0,)


def test_one_string_is_refused_rather_than_scored_letter_by_letter() -> None:
    with pytest.raises(TypeError, match="sequence of texts"):
        gold_sentiment("good")  # type: ignore[arg-type]
