"""T-REX: Trajectory-ranked Reward EXtrapolation (Brown, Goo, Nagarajan, Niekum, ICML 2019,
arXiv:1904.06387).

A reward net r(s) over observations is trained so that, for a pair of snippets from two ranked
trajectories, the snippet from the better one has the larger summed reward: the Bradley-Terry
cross-entropy  -log( exp(R_i) / (exp(R_i) + exp(R_j)) ),  R = sum of r over the snippet.
Snippet pairs are drawn at random with the progress prior: the snippet from the better trajectory
starts no earlier than the one from the worse. Defaults are the paper's (Atari appendix): 6000
snippet pairs of length 50-100, Adam with lr 5e-5, one pass with one pair per step; an ensemble
whose members see different random pairs and whose standardised outputs are averaged. The net is
the reference code's CNN for Atari frames, score and lives masked (plugins/rewards/nets.py), and an
MLP for vector observations.

The loss fixes r only up to a positive scale and an offset per member, and the offset matters to
an optimizer wherever episodes can end early: it is a bonus (or penalty) for every step alive.
Equal-length snippets carry no information about it; whole demonstrations of different lengths do.
rexlab therefore (1) standardises each member over all demonstration states (mean 0, std 1) and
averages them, and (2) with `fit_offset`, adds the per-step offset b that best explains the ranking
of the whole demonstrations: a two-parameter Bradley-Terry fit of P(i > j) = sigmoid(a (S_i - S_j)
+ c (T_i - T_j)), S the standardised learned return and T the length, a >= 0, L2-regularised by
`offset_l2`, gives b = c / a. Where all demonstrations have one length, c stays 0. Where length
alone orders every pair (CartPole, whose true return is the length), the fit is separable and b is
set by `offset_l2`: reward/length_pair_accuracy (the share of pairs that length alone orders right)
is logged so this is visible. Both steps are rexlab's, not the paper's; fit_offset=false gives the
plain standardised reward.

Bounded rewards: `squash=tanh` passes each member's standardised reward through tanh before the
offset (the D-REX MuJoCo code's tanh reward variant), so states far from the demonstrations cannot
reach rewards much below the demonstrations' own and make ending an episode pay; `squash=sigmoid`
is the T-REX Atari code's reward for PPO (custom_reward_wrapper.py: sigmoid of the net's output),
taken here of the standardised output so its range does not depend on the raw scale a seed
happens to learn (it pays every step, which on Seaquest taught the policy to wait; README).
`alive_bonus` adds a constant every step (an option of the T-REX and D-REX MuJoCo code).

Refits (online preferences, plugins/preferences/online.py): with `warm_start`, calling `fit` again
with more preferences continues training the existing nets (a fresh Adam state, `refit_pairs` new snippet
pairs per member from all pairs so far) instead of starting afresh; whether a preference pair is held out for
validation depends only on its index, so a pair trained on in one fit is never validated on in a
later one. `member_returns` gives each member's learned return, for query selection by ensemble
disagreement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from core.evaluation import pearson, true_order_accuracy
from core.interfaces import Capabilities, Environment, RewardModel
from core.run import ResumableLoader, RunContext
from core.schema import ConfigError, LearningRate, NonNegative, Positive, PositiveInt, UnitOpen
from core.types import Preferences, Trajectory
from plugins.rewards.nets import EnsembleCNN, EnsembleMLP, ensemble_rewards, reward_ensemble

RewardNet = EnsembleMLP | EnsembleCNN


def sample_snippet_pairs(prefs: Preferences, n: int, min_len: int, max_len: int,
                         rng: np.random.Generator, pairs: np.ndarray | None = None) -> np.ndarray:
    """n snippet pairs (n, 5): better traj, its start, worse traj, its start, length, from the
    preference pairs `pairs` (P, 2) (default: all of prefs.pairs).

    As in the T-REX reference code: the length is drawn in [min_len, max_len] and clipped to both
    trajectories; the worse snippet starts in [0, shorter length - length], the better one no
    earlier than that (the progress prior), anywhere it fits in its own trajectory.
    """
    pairs = prefs.pairs if pairs is None else pairs
    if len(pairs) == 0:
        raise ValueError("T-REX needs at least one preference pair; the ranking has none")
    lengths = np.array([len(t) for t in prefs.items], dtype=np.int64)
    i, j = pairs[rng.integers(len(pairs), size=n)].T
    shorter = np.minimum(lengths[i], lengths[j])
    length = np.minimum(rng.integers(min_len, max_len + 1, size=n), shorter)
    start_j = rng.integers(0, shorter - length + 1)
    start_i = rng.integers(start_j, lengths[i] - length + 1)
    return np.stack([i, start_i, j, start_j, length], 1).astype(np.int64)


class SnippetPairs(Dataset):
    """Item k: obs of both snippets of pair k for every member, every `stride`-th step (the T-REX
    Atari code keeps every other frame stack), padded to F = ceil(max_len / stride), and a mask.

    specs: (M, P, 5) from sample_snippet_pairs. Returns obs (M, 2, F, D) in the observations' dtype
    (uint8 frames stay uint8 until the net scales them), mask (M, 2, F).
    """

    def __init__(self, obs: list[torch.Tensor], specs: np.ndarray, max_len: int, stride: int = 1) -> None:
        self.obs, self.specs, self.stride = obs, specs, stride
        self.max_len = -(-max_len // stride)

    def __len__(self) -> int:
        return self.specs.shape[1]

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        members = self.specs.shape[0]
        dim = self.obs[0].shape[1:]
        x = torch.zeros(members, 2, self.max_len, *dim, dtype=self.obs[0].dtype)
        mask = torch.zeros(members, 2, self.max_len)
        for m in range(members):
            i, si, j, sj, length = (int(v) for v in self.specs[m, k])
            kept = -(-length // self.stride)
            x[m, 0, :kept] = self.obs[i][si : si + length : self.stride]
            x[m, 1, :kept] = self.obs[j][sj : sj + length : self.stride]
            mask[m, :, :kept] = 1.0
        return x, mask


def fit_step_offset(learned: np.ndarray, lengths: np.ndarray, pairs: np.ndarray, l2: float,
                    max_offset: float = 5.0) -> float:
    """The per-step offset b that makes whole-trajectory returns S + b T best explain the
    preferences `pairs` (rows (i, j): i preferred), by a regularised two-parameter logistic fit.
    |b| is capped at `max_offset` (in standardised reward units a step): where the learned returns
    say nothing about the ranking, a goes to 0 and c / a would grow without bound."""
    d_s = torch.as_tensor(learned[pairs[:, 0]] - learned[pairs[:, 1]], dtype=torch.float64)
    d_t = torch.as_tensor(lengths[pairs[:, 0]] - lengths[pairs[:, 1]], dtype=torch.float64)
    if len(pairs) == 0 or d_t.abs().max() == 0:
        return 0.0
    scale_s, scale_t = d_s.abs().mean().clamp_min(1e-8), d_t.abs().mean().clamp_min(1e-8)
    params = torch.zeros(2, dtype=torch.float64, requires_grad=True)  # softplus^-1(a), c (scaled)
    opt = torch.optim.LBFGS([params], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        a, c = F.softplus(params[0]), params[1]
        loss = F.softplus(-(a * d_s / scale_s + c * d_t / scale_t)).mean() + l2 * (a**2 + c**2)
        loss.backward()
        return loss

    opt.step(closure)
    a, c = F.softplus(params[0]).item() / scale_s.item(), params[1].item() / scale_t.item()
    return float(np.clip(c / max(a, 1e-12), -max_offset, max_offset))


def snippet_returns(net: RewardNet, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, M, 2, L, D), mask (B, M, 2, L) -> summed rewards (M, B, 2)."""
    r = net(x.transpose(0, 1).flatten(2, 3).flatten(3)).reshape(mask.transpose(0, 1).shape)
    return (r * mask.transpose(0, 1)).sum(-1)


def ranking_loss(returns: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry cross-entropy with item 0 preferred: returns (..., 2) -> mean of
    -log sigmoid(R_0 - R_1) over the batch, summed over leading member dims."""
    losses = F.softplus(returns[..., 1] - returns[..., 0])
    return losses.mean(-1).sum()


class TREXModule(L.LightningModule):
    """Trains all ensemble members at once; each member has its own snippet pairs."""

    def __init__(self, net: RewardNet, train: SnippetPairs, val: SnippetPairs, lr: float, weight_decay: float,
                 batch_size: int, log_every: int) -> None:
        super().__init__()
        self.net, self.train_set, self.val_set, self.log_every = net, train, val, log_every
        self.lr, self.weight_decay, self.batch_size = lr, weight_decay, batch_size
        self.val_correct: list[torch.Tensor] = []
        self.val_losses: list[torch.Tensor] = []

    def train_dataloader(self) -> DataLoader:
        return ResumableLoader(self.train_set, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=64)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = ranking_loss(snippet_returns(self.net, *batch))
        if (self.global_step + 1) % self.log_every == 0:  # only the steps the logger writes (all: 6% of the time)
            self.log("reward/train_loss", loss / self.net.members, prog_bar=True, sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        returns = snippet_returns(self.net, *batch)  # (M, B, 2); every member sees the same pairs
        self.val_losses.append(F.softplus(returns[..., 1] - returns[..., 0]).mean(0))
        votes = (returns[..., 0] > returns[..., 1]).float().mean(0)  # members' majority vote, scale-free
        self.val_correct.append(torch.where(votes == 0.5, 0.5, (votes > 0.5).float()))

    def on_validation_epoch_end(self) -> None:
        accuracy = torch.cat(self.val_correct).float().mean()
        self.log("reward/val_loss", torch.cat(self.val_losses).mean())
        self.log("reward/val_pair_accuracy", accuracy, prog_bar=True)
        self.val_correct.clear()
        self.val_losses.clear()


SQUASHES = {"none": lambda z: z, "tanh": torch.tanh, "sigmoid": torch.sigmoid}  # reward.squash


def member_rewards(net: RewardNet, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                   squash: str = "none") -> torch.Tensor:
    """Each member's reward standardised by (mean, std), through SQUASHES[squash]: x (S, D) -> (M, S)."""
    return SQUASHES[squash]((ensemble_rewards(net, x) - mean) / std)


def standardised_reward(net: RewardNet, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                        squash: str = "none") -> torch.Tensor:
    """Ensemble average of the members' standardised (and optionally squashed) rewards: x (S, D) -> (S,)."""
    return member_rewards(net, x, mean, std, squash).mean(0)


@torch.no_grad()
def standardised_returns(net: RewardNet, obs: list[torch.Tensor],
                         squash: str = "none") -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """One pass of every member over the states of all trajectories (obs (T_k, D) each, T_k >= 1): each
    trajectory's learned return under the ensemble's standardised reward (standardising fixes the per-step
    offset, which would otherwise scale with length), and the per-member mean and std (M, 1) it used."""
    r = ensemble_rewards(net, torch.cat(obs))  # (M, S)
    mean, std = r.mean(1, keepdim=True), r.std(1, keepdim=True).clamp_min(1e-8)
    z = SQUASHES[squash]((r - mean) / std).mean(0).double().numpy()
    starts = np.cumsum([0] + [len(o) for o in obs[:-1]])
    return np.add.reduceat(z, starts), mean, std


class TREX(RewardModel):
    """reward=trex. Fields documented in conf/reward/trex.yaml."""

    capabilities = Capabilities(observations=frozenset({"vector", "image"}), needs_preferences=True, refits=True,
                                data_parallel=True,
                                notes=("For text, reward=bradley_terry is T-REX's loss on whole ranked responses "
                                       "(a ranking of K responses gives its K choose 2 pairs).",))

    def __init__(self, num_pairs: PositiveInt = 6000, min_snippet_length: PositiveInt = 50,
                 max_snippet_length: PositiveInt = 100, ensemble_size: PositiveInt = 5,
                 hidden_sizes: Sequence[PositiveInt] = (256, 256),
                 activation: Literal["tanh", "relu", "leaky_relu"] = "leaky_relu", lr: LearningRate = 5e-5,
                 weight_decay: NonNegative = 0.0, batch_size: PositiveInt = 1, epochs: PositiveInt = 1,
                 val_fraction: UnitOpen = 0.1, val_checks_per_epoch: PositiveInt = 4, fit_offset: bool = True,
                 offset_l2: Positive = 1e-2, frame_stride: PositiveInt = 1, warm_start: bool = True,
                 squash: Literal["none", "tanh", "sigmoid"] = "none", alive_bonus: float = 0.0,
                 refit_pairs: PositiveInt | None = None) -> None:
        if not min_snippet_length <= max_snippet_length:
            raise ConfigError(f"reward.min_snippet_length ({min_snippet_length}) must be <= "
                             f"reward.max_snippet_length ({max_snippet_length})")
        self.num_pairs, self.min_len, self.max_len = num_pairs, min_snippet_length, max_snippet_length
        self.ensemble_size, self.hidden_sizes, self.activation = ensemble_size, list(hidden_sizes), activation
        self.lr, self.weight_decay, self.batch_size, self.epochs = lr, weight_decay, batch_size, epochs
        self.val_fraction, self.val_checks = val_fraction, val_checks_per_epoch
        self.fit_offset, self.offset_l2, self.warm_start = fit_offset, offset_l2, warm_start
        self.frame_stride = frame_stride
        self.squash, self.alive_bonus = squash, float(alive_bonus)
        self.refit_pairs = refit_pairs
        self.net: RewardNet | None = None
        self.shape: tuple[int, ...] = ()  # one observation's shape, and the mask over frames the nets were built for
        self.mask: np.ndarray | None = None
        self.offset = 0.0
        self.fits = 0  # completed calls of fit
        self.steps = 0  # training steps of all fits so far: a refit's reward/* curves continue after them
        self.baselines: dict[str, float] = {}

    def fit(self, prefs: Preferences, env: Environment, run: RunContext) -> None:
        obs = [torch.as_tensor(t.obs).reshape(len(t), -1) for t in prefs.items]  # uint8 frames stay uint8
        if self.net is None or not self.warm_start:
            self.shape, self.mask = tuple(prefs.items[0].obs.shape[1:]), env.reward_input_mask
            self.net = self.build()
        if self.steps:  # a refit: its curves continue after the earlier fits' steps
            run = run.shifted(run.step_offset + self.steps)
        rng = np.random.default_rng([run.seed, self.fits])
        train_pairs, val_pairs = self.split(prefs.pairs, np.random.default_rng(run.seed))
        num_pairs = self.num_pairs
        if self.fits > 0 and self.warm_start and self.refit_pairs is not None:  # a refit
            num_pairs = self.refit_pairs
        train_specs = np.stack([sample_snippet_pairs(prefs, num_pairs, self.min_len, self.max_len, rng,
                                                     train_pairs) for _ in range(self.ensemble_size)])
        n_val = max(1, int(round(num_pairs * self.val_fraction)))
        val_specs = sample_snippet_pairs(prefs, n_val, self.min_len, self.max_len, rng, val_pairs)
        max_len = int(max(train_specs[..., 4].max(), val_specs[:, 4].max()))
        train = SnippetPairs(obs, train_specs, max_len, self.frame_stride)
        val = SnippetPairs(obs, np.repeat(val_specs[None], self.ensemble_size, 0), max_len, self.frame_stride)
        steps_per_epoch = math.ceil(num_pairs / self.batch_size)
        log_every = max(1, min(50, steps_per_epoch // 20))
        module = TREXModule(self.net, train, val, self.lr, self.weight_decay, run.per_process(self.batch_size),
                            log_every)
        trainer = run.trainer(max_steps=steps_per_epoch * self.epochs, max_epochs=self.epochs,
                              unit=f"T-REX batches of {self.batch_size} snippet pair(s) x {self.ensemble_size} net(s)",
                              val_check_interval=max(1, steps_per_epoch // self.val_checks),
                              log_every_n_steps=log_every, num_sanity_val_steps=0)
        run.fit(trainer, module)
        self.steps += trainer.global_step + 1
        learned, self.mean, self.std = standardised_returns(self.net, obs, self.squash)
        correlation = pearson(learned, np.array([t.true_return for t in prefs.items]))
        if math.isfinite(correlation):
            run.log({"reward/return_correlation": correlation}, trainer.global_step)
        if self.fit_offset:
            lengths = np.array([len(t) for t in prefs.items], dtype=np.float64)
            self.offset = fit_step_offset(learned, lengths, prefs.pairs, self.offset_l2)
            by_length = np.mean(lengths[prefs.pairs[:, 0]] > lengths[prefs.pairs[:, 1]]) if len(prefs.pairs) else 0.0
            run.log({"reward/step_offset": self.offset, "reward/length_pair_accuracy": float(by_length)}, 0)
        if len(prefs.pairs) >= 2:  # (else the one pair is trained on and "held out" both)
            self.log_true_accuracy(prefs, val_pairs, run, trainer.global_step)
        self.fits += 1

    def log_true_accuracy(self, prefs: Preferences, held_out: np.ndarray, run: RunContext, step: int) -> None:
        """reward/val_true_pair_accuracy: how often the learned return (as optimisers get it) orders the held-out
        preference pairs' items as their true returns do (pairs of equal true return left out), whatever their
        (perhaps noisy) labels say. Held out by pair: with rankings of whole trajectories the items of held-out pairs
        are in training pairs too; fragments drawn per pair (preference=synthetic) are not."""
        used = np.unique(held_out)
        if len(used) == 0:
            return
        learned, true = np.full(len(prefs.items), np.nan), np.full(len(prefs.items), np.nan)
        learned[used] = self.member_returns([prefs.items[k] for k in used]).mean(0)
        true[used] = [prefs.items[k].true_return for k in used]
        accuracy = true_order_accuracy(held_out, learned, true)
        if math.isfinite(accuracy):
            run.log({"reward/val_true_pair_accuracy": accuracy}, step)

    def split(self, pairs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Hold out about `val_fraction` of the preference pairs (at least one, when there are two
        or more): validation snippets come only from held-out pairs, training snippets never do.
        Pair k is held out when the k-th draw of `rng` is below val_fraction, so with a freshly
        seeded rng its side does not change when pairs are appended."""
        if len(pairs) < 2:
            return pairs, pairs
        draws = rng.random(len(pairs))
        held = draws < self.val_fraction
        if not held.any():
            held[np.argmin(draws)] = True
        if held.all():
            held[np.argmax(draws)] = False
        return pairs[~held], pairs[held]

    @torch.no_grad()
    def reward(self, obs: np.ndarray) -> np.ndarray:
        if self.net is None:
            raise RuntimeError("reward=trex: reward() called before fit()")
        x = torch.as_tensor(np.asarray(obs)).reshape(len(obs), -1)
        return (standardised_reward(self.net, x, self.mean, self.std, self.squash) + self.offset
                + self.alive_bonus).numpy()

    @torch.no_grad()
    def member_returns(self, trajs: list[Trajectory]) -> np.ndarray:
        """Each member's learned return of each trajectory (M, N): its standardised reward plus the
        step offset, summed; the mean over members is `learned_return`."""
        if self.net is None:
            raise RuntimeError("reward=trex: member_returns() called before fit()")
        x = torch.cat([torch.as_tensor(np.asarray(t.obs)).reshape(len(t), -1) for t in trajs])
        r = member_rewards(self.net, x, self.mean, self.std, self.squash) + self.offset + self.alive_bonus
        starts = np.cumsum([0] + [len(t) for t in trajs[:-1]])
        return np.add.reduceat(r.numpy().astype(np.float64), starts, axis=1)

    def to(self, device: torch.device | str) -> TREX:
        if self.net is not None:
            self.net.to(device)
        return self

    def build(self) -> RewardNet:
        """Fresh nets for observations of `self.shape` (the T-REX CNN for frames, masked by `self.mask`)."""
        return reward_ensemble(self.ensemble_size, self.shape, self.hidden_sizes, self.activation, self.mask)

    def state_dict(self) -> dict:
        if self.net is None:
            return {}
        return {"net": self.net.state_dict(), "shape": self.shape, "mask": self.mask, "mean": self.mean,
                "std": self.std, "offset": self.offset, "squash": self.squash, "alive_bonus": self.alive_bonus,
                "fits": self.fits, "steps": self.steps, "baselines": self.baselines,
                "architecture": (self.ensemble_size, self.hidden_sizes, self.activation)}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict(): the nets as they were built (ensemble size and layers), whatever this
        config says, and how they score (standardisation, offset, squash, bonus)."""
        self.shape, self.mask = tuple(state["shape"]), state["mask"]
        self.ensemble_size, self.hidden_sizes, self.activation = state["architecture"]
        self.net = self.build()
        self.net.load_state_dict(state["net"])
        self.mean, self.std, self.offset = state["mean"], state["std"], float(state["offset"])
        self.squash, self.alive_bonus = state["squash"], float(state["alive_bonus"])
        self.fits, self.steps, self.baselines = int(state["fits"]), int(state["steps"]), dict(state["baselines"])
