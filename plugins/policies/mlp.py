"""MLP building blocks: the actor-critic base, an MLP actor-critic for vector observations, a plain MLP.

Other plugins import these by their public names (`ActorCriticBase`, `ActorCritic`, `mlp`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from core.interfaces import Policy

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU}


def mlp(sizes: Sequence[int], activation: str = "tanh", out_gain: float = 1.0) -> nn.Sequential:
    """Linear layers of the given sizes with `activation` between them; orthogonal init (gain sqrt 2
    for hidden layers, `out_gain` for the last), zero biases, as in the PPO implementation details."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not one of {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        last = i == len(sizes) - 2
        layer = nn.Linear(n_in, n_out)
        nn.init.orthogonal_(layer.weight, out_gain if last else np.sqrt(2))
        nn.init.zeros_(layer.bias)
        layers.append(layer)
        if not last:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class RunningMeanStd(nn.Module):
    """Running mean and variance of a stream of batches (parallel-variance update); saved with the
    module's state_dict so a checkpoint restores its normalisation.

    The statistics are float64 CPU buffers, updated in place with NumPy on their memory: `update`
    runs once per environment step on a handful of rows, where torch's per-call cost is several
    times NumPy's (bench/ppo_vs_sb3.py)."""

    mean: torch.Tensor
    var: torch.Tensor
    count: torch.Tensor

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    def _apply(self, fn: Any, recurse: bool = True) -> RunningMeanStd:
        """The statistics stay float64 on the CPU, where NumPy updates them in place, wherever the policy goes."""
        return self

    def update(self, x: np.ndarray | torch.Tensor) -> None:
        """Merge a batch x (B, *shape) (or anything reshaping to it) into the statistics."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, *self.mean.shape)
        mean, var, count, n = self.mean.numpy(), self.var.numpy(), float(self.count), x.shape[0]
        batch_mean = x.mean(0)
        deviation = x - batch_mean
        batch_var = (deviation * deviation).mean(0)
        delta, total = batch_mean - mean, count + n
        var[...] = (var * count + batch_var * n + delta**2 * count * n / total) / total
        mean += delta * n / total
        self.count.fill_(total)


class ActorCriticBase(nn.Module, Policy):
    """What every actor-critic shares: the action head's distribution and acting.

    Discrete actions: Categorical over logits (N, A). Continuous: diagonal Gaussian with a
    state-independent log std, actions (N, A) clipped to the space's bounds when acting.
    Subclasses turn raw observations (NumPy, on the CPU) into the network's input on the network's device
    (`normalize`) and that input into action-head outputs (`head`, (N, A)) and values (`value`, (N,)).
    """

    low: torch.Tensor
    high: torch.Tensor
    architecture: dict[str, Any]
    """What rebuilds the network besides the task's spaces (hidden sizes, activation, ...), saved with it."""

    @property
    def device(self) -> torch.device:
        """Where the network is (the input `normalize` makes goes there)."""
        return next(self.parameters()).device

    def __init__(self, action_space: gym.Space) -> None:
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if isinstance(action_space, gym.spaces.Discrete):
            self.n_actions = int(action_space.n)
        elif isinstance(action_space, gym.spaces.Box):
            self.n_actions = int(np.prod(action_space.shape))
            self.log_std = nn.Parameter(torch.zeros(self.n_actions))
            self.register_buffer("low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(action_space.high, dtype=torch.float32))
        else:
            raise ValueError(f"actor-critic policies support Discrete and Box actions, not {action_space}")

    def normalize(self, obs: np.ndarray | torch.Tensor, update: bool = False) -> torch.Tensor:
        """Raw observations (N, *obs_shape) -> the network's input (N, D), updating running stats if asked."""
        raise NotImplementedError

    def fit_normalization(self, obs: np.ndarray) -> None:
        """Set any input normalisation from a fixed set of raw observations (demonstrations)."""

    def actor_parameters(self) -> list[nn.Parameter]:
        """The parameters the action distribution depends on (all but the critic's)."""
        return [p for name, p in self.named_parameters() if not name.startswith("critic.")]

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Action-head output (N, A) for network inputs x: logits, or the Gaussian's mean."""
        raise NotImplementedError

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """State value (N,) for network inputs x."""
        raise NotImplementedError

    def distribution_and_value(self, x: torch.Tensor) -> tuple[Distribution, torch.Tensor]:
        """Both at once (networks with a shared torso run it once)."""
        return self.distribution(x), self.value(x)

    def make_distribution(self, out: torch.Tensor) -> Distribution:
        """The action distribution for action-head outputs (N, A)."""
        # No argument validation: its checks cost more than the small networks' forward pass, and the
        # inputs are the network's own outputs.
        if self.discrete:
            return Categorical(logits=out, validate_args=False)
        return Independent(Normal(out, self.log_std.exp().expand_as(out), validate_args=False), 1,
                           validate_args=False)

    def distribution(self, x: torch.Tensor) -> Distribution:
        """Action distribution for network inputs x."""
        return self.make_distribution(self.head(x))

    def to_env_action(self, action: torch.Tensor) -> np.ndarray:
        """Policy output -> what env.step takes (continuous actions clipped to the bounds)."""
        if self.discrete:
            return action.cpu().numpy()
        return torch.maximum(torch.minimum(action, self.high), self.low).cpu().numpy()

    def save(self, path: Path) -> dict[str, Any]:
        """The state dict (network, normalisation statistics) as path.pt; loaded back by
        plugins.policies.cnn.load_actor_critic with the architecture returned here."""
        file = path.parent / f"{path.name}.pt"
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), file)
        return {"_target_": "plugins.policies.cnn.load_actor_critic", "path": file.name, **self.architecture}

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        dist = self.distribution(self.normalize(obs))
        if deterministic:
            action = cast(Categorical, dist).probs.argmax(-1) if self.discrete else dist.mean
        else:
            action = dist.sample()
        return self.to_env_action(action)


class ActorCritic(ActorCriticBase):
    """Separate actor and critic MLPs over (optionally normalised) vector observations (N, D)."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space,
                 hidden_sizes: Sequence[int] = (64, 64), activation: str = "tanh",
                 normalize_obs: bool = False) -> None:
        super().__init__(action_space)
        obs_dim = int(np.prod(observation_space.shape or ()))
        hidden = list(hidden_sizes)
        self.architecture = {"hidden_sizes": hidden, "activation": activation, "normalize_obs": normalize_obs}
        self.actor = mlp([obs_dim, *hidden, self.n_actions], activation, out_gain=0.01)
        self.critic = mlp([obs_dim, *hidden, 1], activation, out_gain=1.0)
        self.obs_rms = RunningMeanStd((obs_dim,)) if normalize_obs else None

    def normalize(self, obs: np.ndarray | torch.Tensor, update: bool = False) -> torch.Tensor:
        if isinstance(obs, torch.Tensor):  # (a BC batch, which Lightning put on the device)
            obs = obs.detach().cpu().numpy()
        x = np.asarray(obs, dtype=np.float32).reshape(len(obs), -1)
        if self.obs_rms is None:
            return torch.from_numpy(x).to(self.device)
        if update:
            self.obs_rms.update(x)
        # NumPy for the same reason as RunningMeanStd.update, in float32 like the network
        mean, var = self.obs_rms.mean.numpy().astype(np.float32), self.obs_rms.var.numpy().astype(np.float32)
        return torch.from_numpy(np.clip((x - mean) / np.sqrt(var + np.float32(1e-8)), -10.0, 10.0)).to(self.device)

    def fit_normalization(self, obs: np.ndarray) -> None:
        if self.obs_rms is not None:
            self.obs_rms.update(np.asarray(obs, dtype=np.float32).reshape(len(obs), -1))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.actor(x)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x).squeeze(-1)
