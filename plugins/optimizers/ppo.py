"""Proximal Policy Optimization (Schulman et al. 2017, arXiv:1707.06347) for control.

Reads top to bottom: hyperparameters, the loss as plain functions (GAE, clipped surrogate, clipped
value loss; reused by the text PPO), the LightningModule that alternates vectorised rollouts with
minibatch epochs, and the Optimizer that runs it. Implementation details follow "The 37
Implementation Details of PPO" (Huang et al. 2022): orthogonal init, Adam eps 1e-5, linear
learning-rate annealing, advantage normalisation per minibatch, clipped value loss, global gradient
clipping, truncation bootstrapping, running reward scaling by the discounted return's std.
Per-environment tuned settings (rl-baselines3-zoo; the PPO paper's for MuJoCo and Atari) live in
conf/ppo/<env>.yaml. The network is an MLP actor-critic for vector observations and the Nature CNN
one for image observations (plugins/policies/cnn.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from core.interfaces import Capabilities, Environment, IterationCallback, Optimizer, Policy, RewardModel, SavedPolicy
from core.run import ResumableLoader, RunContext
from core.schema import ConfigError, LearningRate, NonNegative, Positive, PositiveInt, Unit, structured
from core.types import Preferences, Trajectory
from plugins.policies.cnn import actor_critic_for, start_from
from plugins.policies.mlp import ActorCriticBase, RunningMeanStd

log = logging.getLogger(__name__)


@dataclass
class PPOHparams:
    """PPO settings; every field is documented in conf/ppo/cartpole.yaml."""

    total_timesteps: PositiveInt = 100_000
    num_envs: PositiveInt = 8
    num_steps: PositiveInt = 128
    learning_rate: LearningRate = 2.5e-4
    anneal_lr: bool = True
    gamma: Unit = 0.99
    gae_lambda: Unit = 0.95
    num_minibatches: PositiveInt = 4
    update_epochs: PositiveInt = 4
    norm_adv: bool = True
    clip_coef: Positive = 0.2
    clip_vloss: bool = True
    ent_coef: NonNegative = 0.01
    vf_coef: NonNegative = 0.5
    max_grad_norm: Positive = 0.5
    target_kl: Positive | None = None
    normalize_obs: bool = False
    normalize_reward: bool = True
    clip_reward: Positive | None = None
    hidden_sizes: list[PositiveInt] = field(default_factory=lambda: [64, 64])
    activation: Literal["tanh", "relu", "leaky_relu"] = "tanh"


# ---------------------------------------------------------------- the math, as plain functions
def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_value: torch.Tensor,
        gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016).

    rewards, values, dones: (T, N); dones[t] = the episode ended at step t (no bootstrap past it).
    last_value: (N,) value of the observation after step T-1. Returns (advantages, returns), (T, N),
    on the inputs' device, without gradient (they are targets). The backward recursion runs in NumPy:
    T steps on (N,) rows, where torch's per-call cost would dominate; same dtype, same results.
    """
    r, v, d, last = (x.detach().float().cpu().numpy() for x in (rewards, values, dones, last_value))
    advantages = np.zeros_like(r)
    last_gae = np.zeros_like(last)
    for t in reversed(range(r.shape[0])):
        next_value = last if t == r.shape[0] - 1 else v[t + 1]
        not_done = 1.0 - d[t]
        delta = r[t] + gamma * next_value * not_done - v[t]
        last_gae = delta + gamma * lam * not_done * last_gae
        advantages[t] = last_gae
    adv = torch.from_numpy(advantages).to(rewards.device)
    return adv, adv + values.detach()


def rollout_pieces(obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, ends: np.ndarray,
                   terminated: np.ndarray) -> list[Trajectory]:
    """A rollout of T steps in N environments (obs (T, N, ...), actions (T, N, ...), true rewards, episode ends
    and real ends (T, N)) as trajectories: each environment's steps split after each episode end;
    info["terminated"] is True only for a piece that ended for real."""
    pieces = []
    for i in range(obs.shape[1]):
        cuts = np.flatnonzero(ends[:, i]) + 1
        for start, stop in zip(np.r_[0, cuts], np.r_[cuts, len(obs)], strict=True):
            if stop > start:
                pieces.append(Trajectory(obs[start:stop, i].copy(), actions[start:stop, i].copy(),
                                         rewards[start:stop, i].copy(),
                                         {"terminated": bool(terminated[stop - 1, i])}))
    return pieces


def clipped_policy_loss(logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor,
                        clip_coef: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate objective (to minimise), with approx KL and clip fraction.

    All tensors (B,). The KL estimate is ((ratio - 1) - log ratio).mean() (Schulman's k3).
    """
    log_ratio = logprob - old_logprob
    ratio = log_ratio.exp()
    loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)).mean()
    with torch.no_grad():
        stats = {"approx_kl": ((ratio - 1) - log_ratio).mean(),
                 "clipfrac": ((ratio - 1.0).abs() > clip_coef).float().mean()}
    return loss, stats


def value_loss(value: torch.Tensor, old_value: torch.Tensor, returns: torch.Tensor,
               clip_coef: float | None) -> torch.Tensor:
    """0.5 * squared error to the returns; with clip_coef, the pessimistic clipped variant."""
    unclipped = (value - returns) ** 2
    if clip_coef is None:
        return 0.5 * unclipped.mean()
    clipped = (old_value + (value - old_value).clamp(-clip_coef, clip_coef) - returns) ** 2
    return 0.5 * torch.max(unclipped, clipped).mean()


class ReturnScaler:
    """Scales rewards by the running std of the discounted return (gymnasium's NormalizeReward)."""

    def __init__(self, num_envs: int, gamma: float) -> None:
        self.gamma, self.ret = gamma, np.zeros(num_envs)
        self.stats = RunningMeanStd(())

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """rewards, dones (T, N) in time order -> scaled rewards (T, N).

        The statistics take the T steps' returns as one batch: the parallel-variance merge is exact,
        so this is the result of T per-step updates (up to float rounding) at a T-th of the cost, and
        only the final std scales the rollout."""
        returns = np.empty(rewards.shape)
        for t in range(rewards.shape[0]):
            self.ret = self.ret * self.gamma + rewards[t]
            returns[t] = self.ret
            self.ret = np.where(dones[t], 0.0, self.ret)
        self.stats.update(returns)
        return (rewards / np.sqrt(self.stats.var.item() + 1e-8)).astype(np.float32)


# ---------------------------------------------------------------- the Lightning module
class PPOModule(L.LightningModule):
    """One training step = one iteration: a fresh rollout of num_steps x num_envs transitions with the
    current policy, then update_epochs passes of num_minibatches minibatch updates over it.

    The minibatch updates are optimised manually inside the step (backward, global gradient-norm
    clip, Adam step), so Lightning's per-step bookkeeping, about as costly as one update of a small
    MLP, is paid once per iteration instead of once per minibatch (bench/ppo_vs_sb3.py)."""

    def __init__(self, policy: ActorCriticBase, hp: PPOHparams, env: Environment, reward: RewardModel,
                 run: RunContext, callback: IterationCallback | None) -> None:
        super().__init__()
        self.policy, self.hp, self.env, self.reward_model, self.run = policy, hp, env, reward, run
        self.callback = callback
        self.batch_size = hp.num_envs * hp.num_steps
        self.minibatch_size = self.batch_size // hp.num_minibatches
        self.num_iterations = max(1, hp.total_timesteps // self.batch_size)
        self.updates_per_iteration = hp.update_epochs * hp.num_minibatches
        self.envs = env.make_vec(hp.num_envs)
        self.next_obs, _ = self.envs.reset(seed=run.seed)
        self.scaler = ReturnScaler(hp.num_envs, hp.gamma) if hp.normalize_reward else None
        self.env_steps = 0
        self.ep_true = np.zeros(hp.num_envs)
        self.ep_learned = np.zeros(hp.num_envs)
        self.ep_len = np.zeros(hp.num_envs, dtype=np.int64)
        self.finished: list[tuple[float, float, int]] = []
        self.recent_return = float("nan")
        self.start_time = time.time()
        self.automatic_optimization = False

    def train_dataloader(self) -> DataLoader:
        return ResumableLoader(range(self.num_iterations), batch_size=None, shuffle=False)  # iteration indices

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Besides the network and Adam (Lightning's): the environments mid-episode, the reward scaler, the
        episode statistics, the counters and the callback's state (e.g. the demonstrations or labels so far)."""
        checkpoint["ppo"] = {
            "envs": self.env.snapshot(self.envs), "next_obs": self.next_obs, "scaler": self.scaler,
            "env_steps": self.env_steps, "elapsed": time.time() - self.start_time, "episodes": self.episodes(),
            "callback": self.callback.state_dict() if isinstance(self.callback, IterationCallback) else {}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["ppo"]
        self.envs.close()
        if state["envs"] is not None:
            self.envs, self.next_obs = self.env.restore(state["envs"]), state["next_obs"]
        else:  # an environment that cannot be saved (Atari's C++ vector env): its episodes start afresh
            log.warning("env=%s cannot save its episodes in progress: on resume they start afresh (seeded by the "
                        "env step count), so the resumed run differs from an uninterrupted one from here",
                        self.env.name)
            self.envs = self.env.make_vec(self.hp.num_envs)
            self.next_obs, _ = self.envs.reset(seed=self.run.seed + state["env_steps"])
        self.scaler, self.env_steps = state["scaler"], state["env_steps"]
        self.start_time = time.time() - state["elapsed"]
        self.ep_true, self.ep_learned, self.ep_len, self.finished, self.recent_return = state["episodes"]
        if state["envs"] is None:
            self.ep_true[:], self.ep_learned[:], self.ep_len[:] = 0.0, 0.0, 0
        if isinstance(self.callback, IterationCallback):
            self.callback.load_state_dict(state["callback"])

    def episodes(self) -> tuple:
        """The running episodes' returns and lengths, the finished ones' and the recent mean return."""
        return self.ep_true, self.ep_learned, self.ep_len, self.finished, self.recent_return

    def on_fit_start(self) -> None:
        self.reward_model.to(self.device)  # the learned reward scores each rollout where the policy runs

    def on_fit_end(self) -> None:
        self.reward_model.to("cpu")  # as Lightning puts the policy back

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.policy.parameters(), lr=self.hp.learning_rate, eps=1e-5, foreach=True)

    @torch.no_grad()
    def collect(self, iteration: int) -> None:
        """Roll out the current policy, compute advantages, fix this iteration's minibatches."""
        hp, policy, T, N = self.hp, self.policy, self.hp.num_steps, self.hp.num_envs
        if hp.anneal_lr:
            for group in self.adam().param_groups:
                group["lr"] = (1.0 - iteration / self.num_iterations) * hp.learning_rate
        obs_shape = tuple(self.env.observation_space.shape or ())
        raw_obs = np.zeros((T, N, *obs_shape), dtype=np.asarray(self.next_obs).dtype)  # uint8 frames stay small
        device = self.device  # the buffers on the network's; environments and rewards in NumPy on the CPU
        obs = torch.zeros((T, N, int(np.prod(obs_shape))), device=device)
        actions, logprobs, values = [], torch.zeros(T, N, device=device), torch.zeros(T, N, device=device)
        true_rewards, dones = np.zeros((T, N), dtype=np.float32), np.zeros((T, N), dtype=bool)
        terminal, env_actions = np.zeros((T, N), dtype=bool), []  # for a callback that wants the experience
        bootstrap = torch.zeros(T, N, device=device)  # value of the final observation of truncated episodes
        t0 = time.time()
        for t in range(T):
            raw_obs[t] = self.next_obs
            x = policy.normalize(self.next_obs, update=True)
            dist, values[t] = policy.distribution_and_value(x)
            action = dist.sample()
            obs[t] = x
            actions.append(action)
            logprobs[t] = dist.log_prob(action)
            env_actions.append(policy.to_env_action(action))
            self.next_obs, reward, terminated, truncated, infos = self.envs.step(env_actions[-1])
            true_rewards[t], dones[t], terminal[t] = reward, terminated | truncated, terminated
            cut = truncated & ~terminated  # a time limit, not a real end: bootstrap from the final state
            if cut.any():
                final = np.stack([infos["final_obs"][i] for i in np.flatnonzero(cut)])
                bootstrap[t, torch.as_tensor(cut, device=device)] = policy.value(policy.normalize(final))
        self.env_steps += T * N
        learned = None if self.reward_model.uses_env_reward else (
            self.reward_model.reward(raw_obs.reshape(T * N, *raw_obs.shape[2:])).reshape(T, N))
        self._track_episodes(true_rewards, learned, dones)
        if self.callback is not None and self.callback.wants_experience:
            self.callback.experience(rollout_pieces(raw_obs, np.stack(env_actions), true_rewards, dones, terminal))
        if learned is not None and not np.isfinite(learned).all():
            self.run.non_finite("the learned reward of the rollout's states", self.env_steps)
        rewards = true_rewards if learned is None else learned
        if hp.clip_reward is not None:
            rewards = np.clip(rewards, -hp.clip_reward, hp.clip_reward)
        if self.scaler is not None:
            rewards = self.scaler(rewards, dones)
        rewards_t = torch.as_tensor(rewards, device=device) + hp.gamma * bootstrap
        last_value = policy.value(policy.normalize(self.next_obs))
        adv, ret = gae(rewards_t, values, torch.as_tensor(dones, dtype=torch.float32, device=device), last_value,
                       hp.gamma, hp.gae_lambda)
        self.buffer = {"obs": obs.reshape(T * N, -1),
                       "actions": torch.stack(actions).reshape(T * N, *actions[0].shape[1:]),
                       "logprobs": logprobs.reshape(-1), "values": values.reshape(-1),
                       "advantages": adv.reshape(-1), "returns": ret.reshape(-1)}
        sps = T * N / max(time.time() - t0, 1e-9)
        self._log_iteration(sps)

    def _track_episodes(self, true_rewards: np.ndarray, learned: np.ndarray | None, dones: np.ndarray) -> None:
        for t in range(true_rewards.shape[0]):
            self.ep_true += true_rewards[t]
            self.ep_learned += 0.0 if learned is None else learned[t]
            self.ep_len += 1
            for i in np.flatnonzero(dones[t]):
                self.finished.append((self.ep_true[i], self.ep_learned[i], int(self.ep_len[i])))
                self.ep_true[i] = self.ep_learned[i] = self.ep_len[i] = 0

    def _log_iteration(self, sps: float) -> None:
        metrics = {"train/sps": self.env_steps / max(time.time() - self.start_time, 1e-9), "train/rollout_sps": sps}
        recent = self.finished[-20:]
        self.recent_return = float(np.mean([r[0] for r in recent])) if recent else float("nan")
        if self.finished:
            metrics["train/true_return"] = self.recent_return
            metrics["train/episode_length"] = float(np.mean([r[2] for r in recent]))
            if not self.reward_model.uses_env_reward:
                metrics["train/learned_return"] = float(np.mean([r[1] for r in recent]))
        self.run.log(metrics, self.env_steps)
        if self.finished:  # on the progress bar: the mean true return of the last 20 episodes
            self.log("true_return_last20", self.recent_return, prog_bar=True, logger=False)
        self.finished = self.finished[-20:]

    def adam(self) -> torch.optim.Optimizer:
        """The optimizer itself, not Lightning's wrapper: the minibatch steps are plain PyTorch."""
        optimizer = self.optimizers(use_pl_optimizer=False)
        assert isinstance(optimizer, torch.optim.Optimizer)
        return optimizer

    def training_step(self, iteration: int, batch_idx: int) -> None:
        hp, optimizer = self.hp, self.adam()
        self.collect(int(iteration))
        if self.callback is not None and self.callback(self.policy, self.env_steps, self.recent_return):
            self.trainer.should_stop = True
            return
        skip_rest, last, size = False, self.updates_per_iteration - 1, self.minibatch_size
        for epoch in range(hp.update_epochs):
            order = torch.randperm(self.batch_size).to(self.device)  # drawn every epoch, even after a target_kl stop
            shuffled = {k: v[order] for k, v in self.buffer.items()}
            for mb in range(hp.num_minibatches):
                if skip_rest:
                    break
                loss, logs = self.minibatch_loss({k: v[mb * size : (mb + 1) * size] for k, v in shuffled.items()})
                skip_rest = hp.target_kl is not None and bool(logs["approx_kl"] > hp.target_kl)
                # Plain PyTorch inside the step (CPU, float32 here: Lightning's manual_backward and
                # clip_gradients would only add their per-call cost to the same two calls).
                optimizer.zero_grad()
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), hp.max_grad_norm)
                if not bool(torch.isfinite(torch.stack([loss.detach(), norm])).all()):  # before the step spoils
                    self.run.non_finite(f"the PPO loss ({loss.item()}) or its gradient norm ({norm.item()})",
                                        self.env_steps)                          # the weights
                optimizer.step()
                if epoch * hp.num_minibatches + mb == last:  # the iteration's last minibatch (as CleanRL logs)
                    self.run.log({f"train/{k}": v.item() for k, v in logs.items()}, self.env_steps)
        # the next iteration's callback waits for people: the stage checkpoints now, before it (StageCheckpoint)
        self.checkpoint_now = self.callback is not None and self.callback.waits(self.env_steps + self.batch_size)

    def minibatch_loss(self, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """PPO's loss on a minibatch b of the rollout buffer's entries (B, ...), and its parts to log."""
        hp = self.hp
        dist, new_value = self.policy.distribution_and_value(b["obs"])
        logprob, entropy = dist.log_prob(b["actions"]), dist.entropy().mean()
        adv = b["advantages"]
        if hp.norm_adv and len(adv) > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg_loss, stats = clipped_policy_loss(logprob, b["logprobs"], adv, hp.clip_coef)
        v_loss = value_loss(new_value, b["values"], b["returns"],
                            hp.clip_coef if hp.clip_vloss else None)
        loss = pg_loss - hp.ent_coef * entropy + hp.vf_coef * v_loss
        return loss, {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": entropy, **stats}

    def on_train_end(self) -> None:
        self.envs.close()


# ---------------------------------------------------------------- the Optimizer plugin
class PPO(Optimizer):
    """policy=ppo: PPO on the true reward (reward=true) or on a learned RewardModel.

    hparams: PPOHparams fields (conf/ppo/<env>.yaml; null where the env has no such file: PPOHparams'
    defaults, CleanRL's). total_timesteps: overrides hparams'. A run started from another policy
    (policy.init) trains that policy's network, whatever hidden_sizes say.
    """

    capabilities = Capabilities(observations=frozenset({"vector", "image"}),
                                actions=frozenset({"discrete", "continuous"}), calls_back=True)

    def __init__(self, hparams: PPOHparams | None = None, total_timesteps: PositiveInt | None = None) -> None:
        if hparams is None:
            log.warning("ppo: no PPO settings tuned for this env (conf/ppo/<env>.yaml); PPO's defaults are used "
                        "(plugins/optimizers/ppo.py, PPOHparams)")
            hparams = PPOHparams()
        self.hp = structured(PPOHparams, hparams, "ppo")  # checks field names, types and ranges, naming any bad key
        if total_timesteps is not None:
            self.hp.total_timesteps = int(total_timesteps)
        if (self.hp.num_envs * self.hp.num_steps) % self.hp.num_minibatches:
            raise ConfigError(f"ppo.num_minibatches ({self.hp.num_minibatches}) must divide ppo.num_envs x "
                              f"ppo.num_steps ({self.hp.num_envs * self.hp.num_steps}), the rollout's size")

    def fit(self, env: Environment, reward: RewardModel, run: RunContext,
            demonstrations: list[Trajectory] | None = None, callback: IterationCallback | None = None,
            init: SavedPolicy | None = None, preferences: Preferences | None = None) -> Policy:
        policy = (start_from(init, env, "policy=ppo") if init is not None else
                  actor_critic_for(env.observation_space, env.action_space, self.hp.hidden_sizes,
                                   self.hp.activation, self.hp.normalize_obs))
        module = PPOModule(policy, self.hp, env, reward, run, callback)
        trainer = run.trainer(max_steps=module.num_iterations, max_epochs=1,  # one step per iteration, clipping in it
                              log_every_n_steps=module.num_iterations,
                              unit=f"PPO iterations of {module.batch_size} env steps"
                                   + (f" ({run.rename['train']})" if run.rename and "train" in run.rename else ""))
        run.fit(trainer, module)
        policy.eval()
        return policy
