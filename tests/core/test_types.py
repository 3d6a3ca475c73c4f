from __future__ import annotations

import numpy as np
import pytest

from core.types import Preferences, Trajectory


def traj(n: int, reward: float = 1.0) -> Trajectory:
    return Trajectory(np.zeros((n, 3), np.float32), np.zeros(n), np.full(n, reward, np.float32))


def test_a_ranking_of_n_items_gives_n_choose_2_pairs_better_first() -> None:
    items = [traj(5, r) for r in (1.0, 3.0, 2.0, 0.5)]
    prefs = Preferences.from_ranking(items, np.array([t.true_return for t in items]))
    assert len(prefs.pairs) == 6
    for i, j in prefs.pairs:
        assert items[i].true_return > items[j].true_return


def test_ties_give_no_pair() -> None:
    prefs = Preferences.from_ranking([traj(2), traj(2), traj(3)], np.array([1.0, 1.0, 2.0]))
    assert sorted(map(tuple, prefs.pairs)) == [(2, 0), (2, 1)]


def test_mismatched_arrays_are_refused() -> None:
    with pytest.raises(ValueError, match="disagree in length"):
        Trajectory(np.zeros((3, 2)), np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="out of range"):
        Preferences([traj(2)], np.array([[0, 1]]))


def test_a_snippet_is_a_window_of_the_trajectory() -> None:
    t = Trajectory(np.arange(10, dtype=np.float32).reshape(5, 2), np.arange(5), np.arange(5, dtype=np.float32))
    s = t.snippet(1, 3)
    np.testing.assert_array_equal(s.rewards, [1, 2, 3])
    assert s.true_return == 6 and s.info["start"] == 1
    with pytest.raises(ValueError, match="outside a trajectory of 5 steps"):
        t.snippet(3, 3)


def test_preferences_hold_text_responses_and_a_ranking_of_3_gives_3_pairs() -> None:
    from core.types import Response

    items = [Response("Fix it.", "corrected by a person"), Response("Fix it.", "draft"), Response("Fix it.", "bad")]
    prefs = Preferences.from_ranking(items, np.array([0.0, -1.0, -2.0]))
    assert sorted(map(tuple, prefs.pairs)) == [(0, 1), (0, 2), (1, 2)]
    assert prefs.best_first(1)[0].text == "corrected by a person"


def test_same_prompt_pairs_pairs_every_two_responses_to_one_prompt() -> None:
    from core.types import Response, same_prompt_pairs

    responses = [Response("a", "1"), Response("b", "2"), Response("a", "3"), Response("a", "4"), Response("b", "5")]
    assert same_prompt_pairs(responses) == [(0, 2), (0, 3), (2, 3), (1, 4)]
    assert same_prompt_pairs(responses[:2]) == []
