"""Reward networks as batched ensembles: M members evaluated in one pass.

Both take flat observations x (M, ..., D) (member m's inputs in x[m]) and return rewards (M, ...):
- `EnsembleMLP` for vector observations (D features);
- `EnsembleCNN` for stacked frames (D = C*84*84, uint8 scale), the T-REX reference's Atari net
  (Brown et al. 2019): conv 16x7x7/3, 16x5x5/2, 16x3x3/1, 16x3x3/1, linear 784-64-1, leaky ReLU;
  inputs scaled by 1/255 with the task's score and lives rows zeroed.
`ensemble_rewards` evaluates all members on shared states in memory-bounded chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from plugins.policies.mlp import ACTIVATIONS


def _batched_linear(members: int, n_in: int, n_out: int) -> tuple[nn.Parameter, nn.Parameter]:
    bound = 1.0 / math.sqrt(n_in)  # nn.Linear's default init, per member
    return (nn.Parameter(torch.empty(members, n_in, n_out).uniform_(-bound, bound)),
            nn.Parameter(torch.empty(members, 1, n_out).uniform_(-bound, bound)))


class EnsembleMLP(nn.Module):
    """M independent MLPs evaluated in one batched pass: x (M, ..., D) -> r (M, ...)."""

    def __init__(self, members: int, sizes: Sequence[int], activation: str) -> None:
        super().__init__()
        self.members = members
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            w, b = _batched_linear(members, n_in, n_out)
            self.weights.append(w)
            self.biases.append(b)
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        h = x.float().reshape(shape[0], -1, shape[-1])
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if k < len(self.weights) - 1:
                h = self.act(h)
        return h.reshape(shape[:-1])


class EnsembleCNN(nn.Module):
    """M T-REX Atari reward nets: x (M, ..., C*84*84) uint8-scale frames -> r (M, ...).

    hidden_mask: (84, 84) bool, True where the input is zeroed (score and lives). Members run one
    after another on their own inputs (faster on CPU than one grouped convolution, which needs the
    members' frames interleaved in a copy).
    """

    visible: torch.Tensor

    def __init__(self, members: int, channels: int, hidden_mask: np.ndarray | None = None) -> None:
        super().__init__()
        self.members, self.channels = members, channels
        self.nets = nn.ModuleList([nn.Sequential(
            nn.Conv2d(channels, 16, 7, stride=3), nn.LeakyReLU(),
            nn.Conv2d(16, 16, 5, stride=2), nn.LeakyReLU(),
            nn.Conv2d(16, 16, 3, stride=1), nn.LeakyReLU(),
            nn.Conv2d(16, 16, 3, stride=1), nn.LeakyReLU(),
            nn.Flatten(), nn.Linear(16 * 7 * 7, 64), nn.LeakyReLU(), nn.Linear(64, 1),
        ) for _ in range(members)])
        mask = np.zeros((84, 84), bool) if hidden_mask is None else np.asarray(hidden_mask, bool)
        self.register_buffer("visible", torch.as_tensor(~mask, dtype=torch.float32) / 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.reshape(self.members, -1, self.channels, 84, 84)
        r = torch.stack([net(frames[m].float() * self.visible).squeeze(-1) for m, net in enumerate(self.nets)])
        return r.reshape(x.shape[:-1])


def reward_ensemble(members: int, obs_shape: tuple[int, ...], hidden_sizes: Sequence[int], activation: str,
                    hidden_mask: np.ndarray | None) -> EnsembleMLP | EnsembleCNN:
    """The T-REX CNN for frames (C, 84, 84), else an MLP with the given hidden sizes and activation."""
    if len(obs_shape) == 3:
        return EnsembleCNN(members, obs_shape[0], hidden_mask)
    return EnsembleMLP(members, [int(np.prod(obs_shape)), *hidden_sizes, 1], activation)


@torch.no_grad()
def ensemble_rewards(net: EnsembleMLP | EnsembleCNN, states: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Every member's reward for shared flat states (S, D) -> (M, S), `chunk` states at a time on the net's
    device; the result on the CPU."""
    device = next(net.parameters()).device
    out = [net(part.to(device).unsqueeze(0).expand(net.members, -1, -1)).cpu() for part in states.split(chunk)]
    return torch.cat(out, 1) if out else torch.zeros(net.members, 0)
