"""Behavioral cloning: maximum likelihood of the demonstrators' actions (Pomerleau 1991; the
imitation baseline of T-REX and the policy D-REX injects noise into).

Loss: -log pi(a|s) - ent_weight * H(pi(.|s)) + l2_weight * |theta|^2 over demonstration
(state, action) pairs. Defaults follow the `imitation` library's BC (batch 32, Adam lr 1e-3,
ent_weight 1e-3, l2_weight 0); the policy is the same actor network as PPO's (an MLP with
observation normalisation from the demonstrations' statistics, or the Nature CNN for frames), and
every parameter the action distribution depends on is trained (the Gaussian's log std included).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from core.interfaces import Capabilities, Environment, IterationCallback, Optimizer, Policy, RewardModel, SavedPolicy
from core.run import ResumableLoader, RunContext
from core.schema import LearningRate, NonNegative, PositiveInt, Range, UnitOpen
from core.types import Preferences, Trajectory
from plugins.policies.cnn import actor_critic_for, start_from
from plugins.policies.mlp import ActorCriticBase


def bc_loss(policy: ActorCriticBase, obs: torch.Tensor, actions: torch.Tensor, ent_weight: float,
            l2_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative log-likelihood of the actions (B,) or (B, A) under the policy at raw obs (B, ...),
    minus an entropy bonus, plus L2 on the actor's weights."""
    dist = policy.distribution(policy.normalize(obs))
    nll = -dist.log_prob(actions).mean()
    entropy = dist.entropy().mean()
    l2 = sum((p**2).sum() for p in policy.actor_parameters())
    loss = nll - ent_weight * entropy + l2_weight * l2
    return loss, {"nll": nll.detach(), "entropy": entropy.detach()}


class BCModule(L.LightningModule):
    def __init__(self, policy: ActorCriticBase, train: TensorDataset, val: TensorDataset, lr: float,
                 batch_size: int, ent_weight: float, l2_weight: float) -> None:
        super().__init__()
        self.policy, self.train_set, self.val_set = policy, train, val
        self.lr, self.batch_size, self.ent_weight, self.l2_weight = lr, batch_size, ent_weight, l2_weight

    def train_dataloader(self) -> DataLoader:
        return ResumableLoader(self.train_set, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.policy.actor_parameters(), lr=self.lr)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, stats = bc_loss(self.policy, *batch, self.ent_weight, self.l2_weight)
        self.log("bc/train_loss", stats["nll"], prog_bar=True, sync_dist=True)
        self.log("bc/entropy", stats["entropy"])
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        obs, actions = batch
        _, stats = bc_loss(self.policy, obs, actions, 0.0, 0.0)
        self.log("bc/val_loss", stats["nll"], prog_bar=True)
        if self.policy.discrete:
            logits = self.policy.head(self.policy.normalize(obs))
            self.log("bc/val_accuracy", (logits.argmax(-1) == actions).float().mean())


class BehavioralCloning(Optimizer):
    """policy=bc. Fields documented in conf/policy/bc.yaml."""

    capabilities = Capabilities(observations=frozenset({"vector", "image"}),
                                actions=frozenset({"discrete", "continuous"}), needs_demonstrations=True,
                                uses_reward=False, data_parallel=True)

    def __init__(self, epochs: PositiveInt = 10, batch_size: PositiveInt = 32, lr: LearningRate = 1e-3,
                 ent_weight: NonNegative = 1e-3, l2_weight: NonNegative = 0.0,
                 top_fraction: Annotated[float, Range(gt=0, le=1)] = 1.0, val_fraction: UnitOpen = 0.1,
                 hidden_sizes: Sequence[PositiveInt] = (64, 64),
                 activation: Literal["tanh", "relu", "leaky_relu"] = "tanh", normalize_obs: bool = True) -> None:
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.ent_weight, self.l2_weight, self.top_fraction = ent_weight, l2_weight, top_fraction
        self.val_fraction, self.hidden_sizes, self.activation = val_fraction, list(hidden_sizes), activation
        self.normalize_obs = normalize_obs

    def fit(self, env: Environment, reward: RewardModel, run: RunContext,
            demonstrations: list[Trajectory] | None = None, callback: IterationCallback | None = None,
            init: SavedPolicy | None = None, preferences: Preferences | None = None) -> Policy:
        """Clone the best `top_fraction` of `demonstrations` (given best first), starting from `init` if given
        (its normalisation kept); `reward` is unused."""
        if not demonstrations:
            raise ValueError("policy=bc needs demonstrations; choose a preference source that provides them")
        kept = demonstrations[: max(1, math.ceil(len(demonstrations) * self.top_fraction))]
        raw = np.concatenate([t.obs for t in kept])  # raw (uint8 frames stay uint8); normalised per batch
        if init is not None:
            policy = start_from(init, env, "policy=bc")
        else:
            policy = actor_critic_for(env.observation_space, env.action_space, self.hidden_sizes, self.activation,
                                      self.normalize_obs)
            policy.fit_normalization(raw)
        obs = torch.as_tensor(raw)
        actions = torch.as_tensor(np.concatenate([t.actions for t in kept]))
        actions = actions.long() if policy.discrete else actions.float().reshape(len(obs), -1)
        order = torch.randperm(len(obs), generator=torch.Generator().manual_seed(run.seed))
        n_val = max(1, int(len(obs) * self.val_fraction))
        val, train = order[:n_val], order[n_val:]
        module = BCModule(policy, TensorDataset(obs[train], actions[train]), TensorDataset(obs[val], actions[val]),
                          self.lr, run.per_process(self.batch_size), self.ent_weight, self.l2_weight)
        steps = math.ceil(len(train) / self.batch_size) * self.epochs
        trainer = run.trainer(max_steps=steps, max_epochs=self.epochs, log_every_n_steps=max(1, min(50, steps // 50)),
                              num_sanity_val_steps=0, unit=f"BC batches of {self.batch_size} (state, action) pairs")
        run.fit(trainer, module)
        policy.eval()
        return policy
