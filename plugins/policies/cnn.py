"""CNN building blocks for image observations (stacked 84x84 Atari frames) and the choice of network.

- `NatureCNN`: the DQN torso (Mnih et al. 2015) that PPO's Atari experiments use (Schulman et al.
  2017): conv 32x8x8/4, 64x4x4/2, 64x3x3/1, a 512-unit linear layer, ReLU throughout.
- `CNNActorCritic`: that torso shared by a linear actor head (gain 0.01) and critic head (gain 1),
  orthogonal init, inputs scaled by 1/255, as in the PPO implementation details (Huang et al. 2022).
- `actor_critic_for`: the actor-critic an optimizer should build for a task's spaces (CNN for
  image observations, MLP for vectors), so PPO and behavioral cloning share the choice;
  `load_actor_critic` builds one back from its saved file (ActorCriticBase.save); `start_from` is an
  optimizer's start from a saved policy (policy.init, or an earlier stage's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from core.artifacts import load_policy
from core.compat import IncompatibleError
from core.interfaces import Environment, SavedPolicy
from plugins.policies.mlp import ActorCritic, ActorCriticBase


def _init(layer: nn.Module, gain: float) -> nn.Module:
    nn.init.orthogonal_(layer.weight, gain)  # type: ignore[arg-type]
    nn.init.zeros_(layer.bias)  # type: ignore[arg-type]
    return layer


class NatureCNN(nn.Module):
    """x (N, C, 84, 84) float in [0, 1] -> features (N, 512)."""

    def __init__(self, channels: int, features: int = 512) -> None:
        super().__init__()
        g = float(np.sqrt(2))
        self.net = nn.Sequential(
            _init(nn.Conv2d(channels, 32, 8, stride=4), g), nn.ReLU(),
            _init(nn.Conv2d(32, 64, 4, stride=2), g), nn.ReLU(),
            _init(nn.Conv2d(64, 64, 3, stride=1), g), nn.ReLU(),
            nn.Flatten(), _init(nn.Linear(64 * 7 * 7, features), g), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNNActorCritic(ActorCriticBase):
    """Actor and critic heads on one NatureCNN over uint8 frames (N, C, 84, 84).

    `normalize` gives flat inputs (N, C*84*84) in [0, 1], so optimizers can store them like vectors;
    the heads reshape them back to frames.
    """

    def __init__(self, observation_space: gym.Space, action_space: gym.Space) -> None:
        super().__init__(action_space)
        shape = tuple(observation_space.shape or ())
        if len(shape) != 3 or shape[1:] != (84, 84):
            raise ValueError(f"CNNActorCritic needs (C, 84, 84) frames, got observations of shape {shape}")
        self.frame_shape = shape
        self.architecture: dict[str, Any] = {}
        self.torso = NatureCNN(shape[0])
        self.actor = _init(nn.Linear(512, self.n_actions), 0.01)
        self.critic = _init(nn.Linear(512, 1), 1.0)

    def normalize(self, obs: np.ndarray | torch.Tensor, update: bool = False) -> torch.Tensor:
        frames = (obs.to(self.device) if isinstance(obs, torch.Tensor)  # (a BC batch, on the device already)
                  else torch.as_tensor(np.asarray(obs), device=self.device))  # uint8 to the device: 4x less to copy
        return frames.reshape(len(obs), -1).float() / 255.0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.torso(x.reshape(-1, *self.frame_shape))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.actor(self.features(x))

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(self.features(x)).squeeze(-1)

    def distribution_and_value(self, x: torch.Tensor) -> tuple[torch.distributions.Distribution, torch.Tensor]:
        h = self.features(x)
        return self.make_distribution(self.actor(h)), self.critic(h).squeeze(-1)


def actor_critic_for(observation_space: gym.Space, action_space: gym.Space, hidden_sizes: Sequence[int] = (64, 64),
                     activation: str = "tanh", normalize_obs: bool = False) -> ActorCriticBase:
    """A CNNActorCritic for image observations (C, H, W), else an MLP ActorCritic with the given
    hidden sizes, activation and observation normalisation (which image inputs never need)."""
    if len(observation_space.shape or ()) == 3:
        return CNNActorCritic(observation_space, action_space)
    return ActorCritic(observation_space, action_space, hidden_sizes, activation, normalize_obs)


def load_actor_critic(path: str, observation_space: gym.Space, action_space: gym.Space,
                      hidden_sizes: Sequence[int] = (64, 64), activation: str = "tanh",
                      normalize_obs: bool = False) -> ActorCriticBase:
    """The actor-critic `ActorCriticBase.save` wrote to `path` (its state dict), for the task's spaces."""
    policy = actor_critic_for(observation_space, action_space, hidden_sizes, activation, normalize_obs)
    policy.load_state_dict(torch.load(path, map_location="cpu"))  # (a learner checkpoint saved on a GPU)
    return policy.eval()


def start_from(init: SavedPolicy, env: Environment, who: str) -> ActorCriticBase:
    """The saved actor-critic `init` to train further (in training mode); another kind of policy is refused."""
    policy = load_policy(init, env)
    if not isinstance(policy, ActorCriticBase):
        raise IncompatibleError(f"{who} starts from actor-critic networks; {init.path} holds a {type(policy).__name__}")
    return policy.train()
