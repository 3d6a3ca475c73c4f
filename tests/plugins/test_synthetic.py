from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest

from core.demo_files import save_demos
from core.labels import annotator_scales, calibrate, correct_probability, majority_correct
from core.pipeline import RunSettings
from core.run import RunContext
from core.schema import ConfigError, check_config
from core.tracking import NullTracker
from core.types import Trajectory
from plugins.envs.gym import GymEnv
from plugins.preferences.ranked_demos import RankedDemos
from plugins.preferences.synthetic import SyntheticLabeler
from tests.conftest import compose_config


def test_majority_vote_probability_is_exact() -> None:
    p = np.array([[0.7, 0.7, 0.7], [0.9, 0.5, 0.5]])
    expected_first = 0.7**3 + 3 * 0.7**2 * 0.3
    expected_second = 0.9 * (1 - 0.25) + 0.1 * 0.25  # needs 2 of 3
    np.testing.assert_allclose(majority_correct(p), [expected_first, expected_second])
    np.testing.assert_allclose(majority_correct(np.array([[0.8, 0.6]])), [0.8 * 0.6 + 0.5 * (0.8 * 0.4 + 0.2 * 0.6)])


@pytest.mark.parametrize("noise", ["boltzmann", "flip"])
@pytest.mark.parametrize("annotators", [1, 3])
def test_calibration_meets_the_target_in_expectation(noise: str, annotators: int) -> None:
    gaps = np.random.default_rng(0).exponential(30.0, 500) + 1e-3
    factors = np.exp(np.random.default_rng(1).normal(0, 0.5, annotators)) if annotators > 1 else np.ones(1)
    scale = calibrate(gaps, factors, 0.72, noise)
    p = np.stack([correct_probability(gaps, s, noise) for s in annotator_scales(scale, factors, noise)], 1)
    assert majority_correct(p).mean() == pytest.approx(0.72, abs=1e-4)


def cartpole_source(tmp_path: Path) -> RankedDemos:
    rng = np.random.default_rng(0)
    trajs = [Trajectory(rng.normal(size=(n, 4)).astype(np.float32), np.zeros(n), np.ones(n, np.float32))
             for n in rng.integers(10, 300, 40)]
    save_demos(tmp_path / "rollouts.npz", trajs)
    return RankedDemos(str(tmp_path / "rollouts.npz"))


@pytest.mark.parametrize(("noise", "annotators", "target"), [("boltzmann", 1, 0.72), ("flip", 1, 0.6),
                                                             ("boltzmann", 3, 0.72), ("boltzmann", 1, 1.0),
                                                             ("flip", 3, 1.0)])
def test_measured_agreement_is_near_the_target(tmp_path: Path, noise: str, annotators: int, target: float) -> None:
    L.seed_everything(0)
    tracker = NullTracker()
    labeler = SyntheticLabeler(cartpole_source(tmp_path), num_queries=2000, fragment_length=50, agreement=target,
                               noise=noise, annotators=annotators)
    prefs = labeler.gather(GymEnv("CartPole-v1", "cartpole"), RunContext(0, tmp_path, tracker, progress=False))
    assert len(prefs.items) == 4000 and len(prefs.pairs) == 2000
    assert abs(tracker.last("preference/label_agreement") - target) < 0.03
    returns = np.array([t.true_return for t in prefs.items])
    winners, losers = returns[prefs.pairs[:, 0]], returns[prefs.pairs[:, 1]]
    informative = winners != losers
    assert abs(np.mean(winners[informative] > losers[informative]) - target) < 0.03
    assert 0 < tracker.last("preference/informative_queries") == informative.sum() < 2000  # 50-step windows tie
    assert all(len(t) <= 50 for t in prefs.items)


def test_bad_settings_are_named_with_what_is_allowed() -> None:
    cfg = compose_config("preference=synthetic", "preference.agreement=0.4", "preference.noise=gaussian")
    with pytest.raises(ConfigError) as err:
        check_config(cfg, ["preference"], RunSettings)
    assert "preference.agreement: 0.4: must be a number in (0.5, 1]" in str(err.value)
    assert 'preference.noise: "gaussian": must be one of "boltzmann", "flip"' in str(err.value)
