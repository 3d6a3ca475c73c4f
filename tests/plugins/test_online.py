"""preference=online: the query schedule, fragment cutting, selection, and learning CartPole from labels
asked while the policy trains."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest

from core.evaluation import rollout
from core.pipeline import RunSettings
from core.run import RunContext
from core.schema import ConfigError, check_config
from core.tracking import NullTracker, Tracker
from core.types import Preferences, Trajectory
from plugins.envs.gym import GymEnv
from plugins.optimizers.ppo import PPO
from plugins.preferences.online import (
    OnlinePreferences,
    UniformPolicy,
    cut_fragments,
    label_schedule,
    preference_variance,
)
from plugins.rewards.trex import TREX
from tests.conftest import compose_config

STEPS = 12_288  # PPO env steps of the learning run


def test_schedule_spends_the_budget_at_a_falling_rate() -> None:
    steps, labels = label_schedule(525, 10, 100_000, 20_000.0)
    assert labels.sum() == 525 and np.all(labels > 0)
    assert np.all(np.diff(steps) > 0) and steps[-1] < 100_000
    assert np.all(np.diff(labels) <= 1) and labels[0] > 2 * labels[-1]  # the rate c / (T + c) falls
    _, flat = label_schedule(525, 10, 100_000, 1e12)  # c >> T: a constant rate
    assert flat.max() - flat.min() <= 1


def test_fragments_never_cross_a_time_limit_and_are_cut_at_real_ends() -> None:
    def traj(n: int, terminated: bool) -> Trajectory:
        return Trajectory(np.arange(n, dtype=np.float32)[:, None], np.zeros(n), np.ones(n, np.float32),
                          {"terminated": terminated})

    trajs = [traj(100, False), traj(40, True), traj(10, False)]
    fragments = cut_fragments(trajs, 3000, 25, np.random.default_rng(0))
    by_source = {k: [f for f in fragments if f.info["fragment_of"] == k] for k in range(3)}
    assert all(len(f) == 25 for f in by_source[0])  # a time limit does not end behaviour
    assert {len(f) for f in by_source[1]} == set(range(1, 26))  # a real end cuts the window
    assert all(len(f) == 10 and f.info["start"] == 0 for f in by_source[2])
    shares = np.array([len(by_source[k]) for k in range(3)]) / 3000  # uniform over the possible starts
    np.testing.assert_allclose(shares, np.array([76, 40, 1]) / 117, atol=0.03)


def test_disagreement_is_the_spread_of_the_members_predictions() -> None:
    agree = np.array([[5.0, 0.0], [5.0, 0.0], [5.0, 0.0]])
    split = np.array([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]])
    assert preference_variance(agree)[0] == pytest.approx(0.0)
    assert preference_variance(split)[0] > 0.1


def test_bad_settings_are_named_with_what_is_allowed() -> None:
    cfg = compose_config("preference=online", "preference.agreement=0.4", "preference.selection=best")
    with pytest.raises(ConfigError) as err:
        check_config(cfg, ["preference"], RunSettings)
    assert "preference.agreement: 0.4: must be a number in (0.5, 1]" in str(err.value)
    assert 'preference.selection: "best": must be one of "disagreement", "uniform"' in str(err.value)


def test_config_spreads_the_rounds_over_the_policy_budget() -> None:
    cfg = compose_config("preference=online", "experiment=debug")
    assert cfg.preference.horizon == cfg.policy.total_timesteps
    assert compose_config("preference=online").preference.num_queries == 700


def learn_online(tmp_path: Path, tracker: Tracker, selection: str) -> tuple[PPO, OnlinePreferences, TREX,
                                                                              Preferences, object]:
    """gather -> fit -> PPO with the source's callback, as the pipeline runs them, at tiny budgets."""
    L.seed_everything(0)
    env = GymEnv("CartPole-v1", "cartpole")
    run = RunContext(0, tmp_path, tracker, progress=False)
    source = OnlinePreferences(horizon=STEPS, num_queries=160, rounds=3, selection=selection)  # type: ignore[arg-type]
    reward = TREX(num_pairs=400, min_snippet_length=25, max_snippet_length=25, ensemble_size=3,
                  hidden_sizes=(64, 64), lr=1e-3, batch_size=16, val_fraction=0.2)
    prefs = source.gather(env, run)
    reward.fit(prefs, env, run)
    ppo = PPO(compose_config().ppo, total_timesteps=STEPS)
    policy = ppo.fit(env, reward, run, callback=source.online_callback(prefs, reward, env, run))
    return ppo, source, reward, prefs, policy


def test_online_preferences_teach_cartpole(tmp_path: Path) -> None:
    tracker = NullTracker()
    _, source, reward, prefs, policy = learn_online(tmp_path, tracker, "disagreement")
    env = GymEnv("CartPole-v1", "cartpole")
    # the budget: 40 labels up front, 120 in 3 rounds at the planned steps, nothing more
    queries = tracker.history["preference/queries"]
    assert [q for _, q in queries] == [40, 40 + source.round_labels[0], 40 + source.round_labels[:2].sum(), 160]
    assert len(prefs.pairs) == 160 and len(prefs.items) == 320
    assert all(step >= planned for (step, _), planned in zip(queries[1:], source.round_steps, strict=True))
    # the rounds cut their fragments from PPO's own latest rollouts: only the labels before RL rolled out for
    # themselves (a random policy's episodes), so the extra env steps stop growing after them
    extra = [v for _, v in tracker.history["preference/extra_env_steps"]]
    assert extra[0] >= 2 * 40 * 25 and extra == [extra[0]] * 4, extra
    # disagreement selection asks pairs the ensemble disagrees on more than the candidates at large
    asked = [v for _, v in tracker.history["preference/disagreement_asked"]]
    pool = [v for _, v in tracker.history["preference/disagreement_candidates"]]
    assert len(asked) == 3 and all(a > 1.5 * p for a, p in zip(asked, pool, strict=True)), (asked, pool)
    # each refit continues the reward curves (logged after the previous fit's steps)
    accuracy = tracker.history["reward/val_pair_accuracy"]
    assert len(accuracy) >= 4 * 4 and all(b[0] > a[0] for a, b in zip(accuracy, accuracy[1:], strict=False))
    # held-out labelled pairs (the reward's validation pairs, and fresh ones from the final policy) whose
    # fragments differ in true return: the reward orders them by it (ties carry coin-flip labels)
    true = np.array([t.true_return for t in prefs.items])
    learned = np.array([reward.learned_return(t) for t in prefs.items])
    _, held_out = reward.split(prefs.pairs, np.random.default_rng(0))  # as TREX.fit splits at seed 0
    informative = held_out[true[held_out[:, 0]] != true[held_out[:, 1]]]
    assert len(informative) >= 8 and np.mean(learned[informative[:, 0]] > learned[informative[:, 1]]) > 0.8
    fresh = cut_fragments(rollout(policy, env, 16, seed=123), 600, 25, np.random.default_rng(1))
    true_f = np.array([t.true_return for t in fresh]).reshape(-1, 2)
    learned_f = np.array([reward.learned_return(t) for t in fresh]).reshape(-1, 2)
    differ = true_f[:, 0] != true_f[:, 1]
    agree = (true_f[:, 0] > true_f[:, 1]) == (learned_f[:, 0] > learned_f[:, 1])
    assert differ.sum() >= 20 and agree[differ].mean() > 0.8, (differ.sum(), agree[differ].mean())
    # the policy's true return rises: from random play (about 22) over the rollouts of training
    returns = [r for _, r in tracker.history["train/true_return"]]
    random_return = np.mean([t.true_return for t in rollout(UniformPolicy(env.action_space, 0), env, 32, seed=5)])
    assert np.mean(returns[-5:]) > 3 * random_return and np.mean(returns[-5:]) > 2 * np.mean(returns[:5]), returns
