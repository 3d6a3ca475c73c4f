from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch

from core import signals
from core.run import Checkpointing, RunContext
from core.tracking import NullTracker
from core.types import Preferences, Trajectory
from plugins.envs.gym import GymEnv
from plugins.rewards.trex import TREX, EnsembleMLP, TREXModule, fit_step_offset, ranking_loss, sample_snippet_pairs


def ranked_set(n: int = 8, length: int = 60, seed: int = 0) -> Preferences:
    """Trajectories whose true reward per step is the first observation coordinate; better
    trajectories sit at larger values of it (the second coordinate is noise)."""
    rng = np.random.default_rng(seed)
    items = []
    for quality in np.linspace(0.0, 1.0, n):
        obs = np.stack([rng.normal(quality, 0.3, length), rng.normal(0.0, 1.0, length)], 1).astype(np.float32)
        items.append(Trajectory(obs, np.zeros(length), obs[:, 0].copy()))
    return Preferences.from_ranking(items, np.array([t.true_return for t in items]))


def test_snippets_follow_the_progress_prior_and_stay_inside_trajectories() -> None:
    items = [Trajectory(np.zeros((n, 1), np.float32), np.zeros(n), np.zeros(n, np.float32)) for n in (30, 80)]
    prefs = Preferences(items, np.array([[1, 0]]))
    specs = sample_snippet_pairs(prefs, 500, 10, 50, np.random.default_rng(0))
    better, start_b, worse, start_w, length = specs.T
    assert np.all(better == 1) and np.all(worse == 0)
    assert np.all(length <= 30) and np.all(length >= 10)
    assert np.all(start_b >= start_w)  # the better trajectory is long enough here
    assert np.all(start_b + length <= 80) and np.all(start_w + length <= 30)


def test_ranking_loss_is_the_bradley_terry_cross_entropy() -> None:
    returns = torch.tensor([[[2.0, 0.0]]])
    assert torch.isclose(ranking_loss(returns), -torch.log(torch.sigmoid(torch.tensor(2.0))))


def test_ensemble_members_are_independent() -> None:
    net = EnsembleMLP(3, [2, 8, 1], "relu")
    x = torch.randn(3, 5, 2)
    out = net(x)
    out[1].sum().backward()
    assert net.weights[0].grad[0].abs().sum() == 0 and net.weights[0].grad[1].abs().sum() > 0


def test_trex_learns_to_rank_held_out_pairs_and_correlates_with_true_returns(tmp_path: Path) -> None:
    L.seed_everything(0)
    tracker = NullTracker()
    model = TREX(num_pairs=600, min_snippet_length=10, max_snippet_length=30, ensemble_size=3,
                 hidden_sizes=(32, 32), lr=1e-3, batch_size=8, epochs=2)
    before = [p.detach().clone() for p in EnsembleMLP(3, [2, 32, 32, 1], "leaky_relu").parameters()]
    model.fit(ranked_set(), GymEnv("CartPole-v1", "cartpole"), RunContext(0, tmp_path, tracker, progress=False))
    accuracy = tracker.history["reward/val_pair_accuracy"]
    assert accuracy[-1][1] > 0.9, accuracy
    assert tracker.history["reward/return_correlation"][-1][1] > 0.5
    assert tracker.history["reward/val_true_pair_accuracy"][-1][1] > 0.9  # (the labels are the true order here)
    losses = [v for _, v in tracker.history["reward/train_loss"]]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert len(before) == len(list(model.net.parameters()))
    # the learned reward ranks fresh trajectories by their true return
    fresh = ranked_set(n=5, seed=1).items
    learned = [model.learned_return(t) for t in fresh]
    assert np.all(np.diff(learned) > 0), learned
    # standardised over the demonstration states: mean 0, std 1 on them
    states = np.concatenate([t.obs for t in ranked_set().items])
    r = model.reward(states)
    assert abs(r.mean() - model.offset) < 1e-3


def test_step_offset_follows_what_whole_demonstrations_say_about_length() -> None:
    learned = np.zeros(4)  # the snippet reward says nothing; only length separates the demos
    lengths = np.array([10.0, 20.0, 30.0, 40.0])
    longer_better = np.array([[j, i] for i in range(4) for j in range(i + 1, 4)])
    assert 0 < fit_step_offset(learned, lengths, longer_better, 1e-2) <= 5.0  # capped: a -> 0 here
    assert fit_step_offset(learned, lengths, longer_better[:, ::-1], 1e-2) < 0
    assert fit_step_offset(learned, np.full(4, 25.0), longer_better, 1e-2) == 0.0


def test_step_offset_is_small_when_learned_returns_already_explain_the_ranking() -> None:
    learned = np.array([0.0, 10.0, 20.0, 30.0])
    lengths = np.array([40.0, 30.0, 20.0, 10.0])  # shorter demos are better, and learned return says so
    better_first = np.array([[j, i] for i in range(4) for j in range(i + 1, 4)])
    assert abs(fit_step_offset(learned, lengths, better_first, 1e-2)) < 1.0


def test_a_second_fit_warm_starts_and_never_validates_on_pairs_trained_before(tmp_path: Path) -> None:
    L.seed_everything(0)
    model = TREX(num_pairs=200, min_snippet_length=10, max_snippet_length=30, ensemble_size=2,
                 hidden_sizes=(16,), lr=1e-3, batch_size=8, val_fraction=0.2, refit_pairs=48)
    pairs = np.array([[i, j] for i in range(40) for j in range(i)])
    train, val = model.split(pairs[:300], np.random.default_rng(0))
    train_all, val_all = model.split(pairs, np.random.default_rng(0))
    rows = {tuple(p) for p in train}
    assert rows <= {tuple(p) for p in train_all} and {tuple(p) for p in val} <= {tuple(p) for p in val_all}
    assert 0.1 < len(val_all) / len(pairs) < 0.3
    run = RunContext(0, tmp_path, NullTracker(), progress=False)
    env = GymEnv("CartPole-v1", "cartpole")
    prefs = ranked_set()
    model.fit(prefs, env, run)
    net, first = model.net, model.steps
    trained = [p.detach().clone() for p in net.parameters()]
    model.fit(prefs, env, run)
    assert model.net is net and any(not torch.equal(a, b) for a, b in zip(trained, net.parameters(), strict=True))
    assert (first, model.steps - first) == (200 // 8 + 1, 48 // 8 + 1)  # the refit: refit_pairs pairs (+1: the gap)
    model.warm_start = False
    model.fit(prefs, env, run)
    assert model.net is not net and model.steps - first == 48 // 8 + 200 // 8 + 2  # a fresh fit: num_pairs again
    # the members' returns average to the model's learned return
    members = model.member_returns(prefs.items[:3])
    assert members.shape == (2, 3)
    np.testing.assert_allclose(members.mean(0), [model.learned_return(t) for t in prefs.items[:3]], rtol=1e-4)


@pytest.mark.parametrize(("squash", "low", "high"), [("tanh", -0.5, 1.5), ("sigmoid", 0.5, 1.5)])
def test_squashed_reward_is_bounded_and_keeps_the_ranking(tmp_path: Path, squash: str, low: float,
                                                          high: float) -> None:
    L.seed_everything(0)
    model = TREX(num_pairs=300, min_snippet_length=10, max_snippet_length=30, ensemble_size=2,
                 hidden_sizes=(32, 32), lr=1e-3, batch_size=8, squash=squash, alive_bonus=0.5, fit_offset=False)
    prefs = ranked_set()
    model.fit(prefs, GymEnv("CartPole-v1", "cartpole"), RunContext(0, tmp_path, NullTracker(), progress=False))
    far = np.full((5, 2), 1e3, np.float32)  # far outside the demonstrations
    r = model.reward(np.concatenate([far, -far]))
    assert np.all(r > low - 1e-6) and np.all(r < high + 1e-6)
    assert r.max() - r.min() > 0.1  # bounded, not constant
    learned = [model.learned_return(t) for t in prefs.items]
    assert np.corrcoef(learned, [t.true_return for t in prefs.items])[0, 1] > 0.8


@pytest.mark.parametrize(("hook", "stop_at"), [("training_step", 4), ("training_step", 8),
                                              ("on_validation_epoch_end", 8)])
def test_trex_stopped_mid_fit_resumes_to_the_same_reward_history_and_random_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hook: str, stop_at: int) -> None:
    """SIGTERM at step 4 (a validation follows: the checkpoint waits for it), at the last step, and in the
    final validation (after the last step: the finished fit is saved, then the run stops)."""
    env, prefs = GymEnv("Pendulum-v1", "pendulum"), ranked_set()
    settings = {"num_pairs": 64, "ensemble_size": 2, "hidden_sizes": (16,), "batch_size": 8, "min_snippet_length": 10,
                "max_snippet_length": 20, "val_checks_per_epoch": 4}  # 8 steps, validating every 2

    def fit(run: RunContext) -> tuple[TREX, torch.Tensor]:
        L.seed_everything(0)
        reward = TREX(**settings)  # type: ignore[arg-type]
        reward.fit(prefs, env, run)
        return reward, torch.rand(3)  # the random stream after the fit

    whole_history = NullTracker()
    whole, after = fit(RunContext(0, tmp_path / "a", whole_history, progress=False))
    original = getattr(TREXModule, hook)

    def stopping(self: TREXModule, *args: Any) -> Any:
        out = original(self, *args)
        if self.trainer.global_step + (hook == "training_step") == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    file = tmp_path / "b" / "reward.ckpt"
    monkeypatch.setattr(TREXModule, hook, stopping)
    with signals.installed(), pytest.raises(signals.Interrupted):
        fit(RunContext(0, tmp_path / "b", NullTracker(), progress=False, checkpoint=Checkpointing(file, every=2)))
    monkeypatch.undo()
    history = NullTracker()
    with signals.installed():
        resumed, again = fit(RunContext(0, tmp_path / "b", history, progress=False,
                                        checkpoint=Checkpointing(file, every=2, resume=True)))
    obs = np.concatenate([t.obs for t in prefs.items])
    np.testing.assert_array_equal(resumed.reward(obs), whole.reward(obs))
    assert dict(history.history) == dict(whole_history.history)  # the validation at the stopping step included
    torch.testing.assert_close(again, after, rtol=0, atol=0)
