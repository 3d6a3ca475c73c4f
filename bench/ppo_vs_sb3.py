"""PPO env steps/s: rexlab next to stable-baselines3 (the named peer) and next to raw env stepping,
all in one process with the same torch thread count and the same hyperparameters.

    make bench                                     # installs the `bench` extra (SB3), runs this
    .venv/bin/python bench/ppo_vs_sb3.py --env halfcheetah [--steps 40960] [--threads 1]
    .venv/bin/python bench/ppo_vs_sb3.py --env atari [--game Breakout]

Three measurements, each over the same number of env steps (rounded up to whole rollouts):
- raw: random actions through rexlab's vectorised envs (`env.make_vec`, the same number and kind
  of envs PPO uses): the ceiling for any learner on this machine;
- rexlab: `PPO(hparams).fit(env, reward=true)`, wall time from construction to return (Trainer,
  rollouts, updates);
- SB3: `PPO(policy, VecNormalize(DummyVecEnv), ...).learn()`, wall time from env creation to return.

Hyperparameters come from rexlab's Hydra config (`env=<name>`, conf/ppo/<name>.yaml) and are
translated to SB3's names: n_steps = num_steps, batch_size = num_envs*num_steps/num_minibatches,
n_epochs = update_epochs, linear lr annealing as a schedule, clip_range_vf = clip_coef when
clip_vloss, normalize_obs/normalize_reward -> VecNormalize (obs clip 10, no reward clip, like
rexlab), same hidden sizes and activation in separate actor and critic MLPs, orthogonal init,
Adam eps 1e-5, log std 0. Two small differences of SB3's algorithm remain (same compute): its value
loss is the clipped MSE alone (rexlab: the pessimistic max of clipped and unclipped, times 0.5) and
it stops an iteration at 1.5 * target_kl (rexlab passes target_kl / 1.5 to match).

Atari uses the PPO paper's Atari settings (Schulman et al. 2017, Table 5; rl-baselines3-zoo):
8 envs, 128 steps, 4 epochs, 4 minibatches, lr 2.5e-4 annealed, clip 0.1, ent 0.01, vf 0.5.
SB3 gets CnnPolicy (Nature CNN) on ALE/<game>-v5 with frameskip=1, gymnasium's AtariPreprocessing
(noop 30, frame skip 4, 84x84 grayscale) and FrameStackObservation(4); rexlab's side runs its own
`env=atari` and PPO when they exist (conf/env/atari.yaml and image observations in PPO's
capabilities), and is reported as unavailable otherwise.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium as gym  # noqa: E402
import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from core.cli import quote_bool_choices  # noqa: E402
from core.compat import CONF_DIR  # noqa: E402
from core.interfaces import Environment, EnvReward  # noqa: E402
from core.run import RunContext  # noqa: E402
from core.schema import structured  # noqa: E402
from core.tracking import NullTracker  # noqa: E402
from plugins.optimizers.ppo import PPO, PPOHparams  # noqa: E402
from plugins.policies.mlp import ACTIVATIONS  # noqa: E402

try:
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3 import __version__ as sb3_version
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize
except ImportError as err:  # pragma: no cover - a message, not a fallback
    raise SystemExit(f"bench/ppo_vs_sb3.py needs stable-baselines3: `make bench` or "
                     f"`.venv/bin/pip install -e '.[bench]'` ({err})") from err

# The PPO paper's Atari settings (Table 5), as rl-baselines3-zoo's atari PPO.
ATARI_PAPER: dict[str, Any] = {"num_envs": 8, "num_steps": 128, "update_epochs": 4, "num_minibatches": 4,
               "learning_rate": 2.5e-4, "anneal_lr": True, "clip_coef": 0.1, "clip_vloss": True,
               "ent_coef": 0.01, "vf_coef": 0.5, "max_grad_norm": 0.5, "gamma": 0.99, "gae_lambda": 0.95,
               "norm_adv": True, "target_kl": None}


# ---------------------------------------------------------------- what runs on each side
def compose_env(name: str, *overrides: str) -> tuple[Environment, PPOHparams]:
    """rexlab's env and PPO settings, composed as `python main.py env=<name> reward=true ...` would."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        args = quote_bool_choices([f"env={name}", "reward=true", "policy=ppo", "tracking=none", *overrides])
        cfg = compose("config", overrides=args)
    return instantiate(cfg.env), structured(PPOHparams, cfg.ppo, "ppo")


def atari_factory(game: str) -> Callable[[], gym.Env]:
    """Plain-gymnasium Atari env, preprocessed as rexlab's env=atari: ALE v5 with frameskip=1,
    AtariPreprocessing (noop 30, skip 4, 84x84 grayscale, uint8), 4 stacked frames -> (4, 84, 84)."""
    import ale_py

    gym.register_envs(ale_py)

    def make() -> gym.Env:
        env = gym.make(f"ALE/{game}-v5", frameskip=1)
        env = gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84,
                                              terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False)
        return gym.wrappers.FrameStackObservation(env, stack_size=4)

    return make


def random_actions(space: gym.Space, n: int, rng: np.random.Generator) -> np.ndarray:
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(0, int(space.n), n)
    assert isinstance(space, gym.spaces.Box)
    return rng.uniform(space.low, space.high, (n, *space.shape)).astype(space.dtype)


class Clock:
    """Wall and process CPU time since construction, as steps/s for a number of steps."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def sps(self, steps: int) -> tuple[float, float]:
        return steps / (time.perf_counter() - self.wall), steps / (time.process_time() - self.cpu)


def raw_sps(envs: gym.vector.VectorEnv, single_action_space: gym.Space, steps: int) -> tuple[float, float]:
    """Random actions through `envs` (already built): env steps/s (wall, CPU)."""
    n = envs.num_envs
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    clock = Clock()
    for _ in range(steps // n):
        envs.step(random_actions(single_action_space, n, rng))
    sps = clock.sps(steps)
    envs.close()
    return sps


def rexlab_sps(env: Environment, hp: PPOHparams, steps: int) -> tuple[float, float, float]:
    """Env steps/s of rexlab's PPO on the env's reward: training (wall, CPU), median rollout alone (wall)."""
    L.seed_everything(0, verbose=False)
    tracker = NullTracker()
    clock = Clock()
    PPO(hp, total_timesteps=steps).fit(env, EnvReward(), RunContext(0, Path("/tmp/rexlab-bench"), tracker,
                                                                    progress=False))
    wall, cpu = clock.sps(steps)
    return wall, cpu, float(np.median([v for _, v in tracker.history["train/rollout_sps"]]))


class RolloutTimer(BaseCallback):
    """Times SB3's rollouts (collect_rollouts between on_rollout_start and on_rollout_end)."""

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch, self.t0 = batch, 0.0
        self.sps: list[float] = []

    def _on_rollout_start(self) -> None:
        self.t0 = time.perf_counter()

    def _on_rollout_end(self) -> None:
        self.sps.append(self.batch / (time.perf_counter() - self.t0))

    def _on_step(self) -> bool:
        return True


def sb3_model(make_env: Callable[[], gym.Env], hp: PPOHparams, image: bool) -> SB3PPO:
    """SB3 PPO with rexlab's hyperparameters `hp` (see the module docstring for the mapping)."""
    venv: VecEnv = DummyVecEnv([lambda: Monitor(make_env())] * hp.num_envs)
    if hp.normalize_obs or hp.normalize_reward:
        venv = VecNormalize(venv, norm_obs=hp.normalize_obs, norm_reward=hp.normalize_reward, gamma=hp.gamma,
                            clip_obs=10.0, clip_reward=math.inf, epsilon=1e-8)
    lr, anneal = hp.learning_rate, hp.anneal_lr
    policy_kwargs: dict[str, Any] = {"ortho_init": True, "optimizer_kwargs": {"eps": 1e-5}}
    if not image:  # CnnPolicy keeps its Nature CNN torso shared by linear actor and critic heads
        policy_kwargs |= {"net_arch": {"pi": list(hp.hidden_sizes), "vf": list(hp.hidden_sizes)},
                          "activation_fn": ACTIVATIONS[hp.activation], "log_std_init": 0.0}
    return SB3PPO("CnnPolicy" if image else "MlpPolicy", venv,
                  learning_rate=(lambda progress: progress * lr) if anneal else lr,
                  n_steps=hp.num_steps, batch_size=hp.num_envs * hp.num_steps // hp.num_minibatches,
                  n_epochs=hp.update_epochs, gamma=hp.gamma, gae_lambda=hp.gae_lambda, clip_range=hp.clip_coef,
                  clip_range_vf=hp.clip_coef if hp.clip_vloss else None, normalize_advantage=hp.norm_adv,
                  ent_coef=hp.ent_coef, vf_coef=hp.vf_coef, max_grad_norm=hp.max_grad_norm,
                  target_kl=None if hp.target_kl is None else hp.target_kl / 1.5,
                  policy_kwargs=policy_kwargs, seed=0, device="cpu", verbose=0)


def sb3_sps(make_env: Callable[[], gym.Env], hp: PPOHparams, steps: int, image: bool) -> tuple[float, float, float]:
    """Env steps/s of SB3's PPO: training (wall, CPU), median rollout alone (wall)."""
    clock = Clock()
    model = sb3_model(make_env, hp, image)
    timer = RolloutTimer(hp.num_envs * hp.num_steps)
    model.learn(total_timesteps=steps, callback=timer)
    wall, cpu = clock.sps(steps)
    assert model.num_timesteps == steps, (model.num_timesteps, steps)
    return wall, cpu, float(np.median(timer.sps))


# ---------------------------------------------------------------- the report
def rexlab_atari(game: str) -> tuple[Environment | None, PPOHparams, str]:
    """rexlab's env=atari (env.game=<game>) with the paper's settings, or None and why it is unavailable."""
    conf = CONF_DIR / "env" / "atari.yaml"
    if not conf.exists():
        return None, replace(PPOHparams(), **ATARI_PAPER, normalize_obs=False, normalize_reward=False), \
            f"unavailable: no rexlab env=atari in this checkout ({conf} is missing)"
    env, hp = compose_env("atari", *([f"env.game={game}"] if "game" in OmegaConf.load(conf) else []))
    hp = replace(hp, **ATARI_PAPER)
    if "image" not in PPO.capabilities.observations:
        return None, hp, "unavailable: rexlab's PPO takes no image observations (PPO.capabilities)"
    return env, hp, ""


def median(rows: list[tuple[float, ...]]) -> tuple[float, ...]:
    return tuple(float(np.median(column)) for column in zip(*rows, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="halfcheetah", help="rexlab env option: halfcheetah, hopper, cartpole, atari")
    parser.add_argument("--game", default="Breakout", help="Atari game (--env atari)")
    parser.add_argument("--steps", type=int, default=None, help="env steps per side (default 40960; atari 8192)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same on both sides")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of raw, rexlab, SB3; medians are reported")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    unavailable = ""
    if args.env == "atari":
        env, hp, unavailable = rexlab_atari(args.game)
        make_env, image, label = atari_factory(args.game), True, f"ALE/{args.game}-v5 (preprocessed, 4 frames)"
        action_space = make_env().action_space
    else:
        env, hp = compose_env(args.env)
        assert env is not None
        gym_id = getattr(env, "id", None)
        if gym_id is None:
            raise SystemExit(f"--env {args.env}: rexlab's env has no gymnasium id to build SB3's side from")
        kwargs, max_steps = dict(getattr(env, "kwargs", {})), getattr(env, "max_episode_steps", None)
        make_env, image, label = (lambda: gym.make(gym_id, max_episode_steps=max_steps, **kwargs)), False, gym_id
        action_space = env.action_space
    batch = hp.num_envs * hp.num_steps
    steps = -(-(args.steps or (8192 if image else 40_960)) // batch) * batch

    def raw_envs() -> gym.vector.VectorEnv:  # rexlab's vectorisation, or the same kind of plain gymnasium one
        if env is not None:
            return env.make_vec(hp.num_envs)
        return gym.vector.SyncVectorEnv([make_env] * hp.num_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)

    rounds: dict[str, list[tuple[float, ...]]] = {"raw": [], "rexlab": [], "sb3": []}
    for _ in range(args.repeat):
        rounds["raw"].append(raw_sps(raw_envs(), action_space, steps))
        if env is not None:
            rounds["rexlab"].append(rexlab_sps(env, hp, steps))
        rounds["sb3"].append(sb3_sps(make_env, hp, steps, image))
    raw, sb3 = median(rounds["raw"]), median(rounds["sb3"])

    print(f"{label}: {hp.num_envs} sync envs x {hp.num_steps} steps, {hp.update_epochs} epochs x "
          f"{hp.num_minibatches} minibatches, {steps} env steps per side, torch threads {torch.get_num_threads()}"
          + (f", median of {args.repeat} rounds" if args.repeat > 1 else ""))
    print(f"{'env steps/s':<34}{'wall':>9}{'per CPU-s':>11}{'rollouts alone':>16}")
    print(f"{'raw env stepping (random actions)':<34}{raw[0]:>9.0f}{raw[1]:>11.0f}")
    print(f"{'SB3 ' + sb3_version + ' PPO':<34}{sb3[0]:>9.0f}{sb3[1]:>11.0f}{sb3[2]:>16.0f}")
    if env is None:
        print(f"{'rexlab PPO':<34}  {unavailable}")
        return
    rex = median(rounds["rexlab"])
    print(f"{'rexlab PPO':<34}{rex[0]:>9.0f}{rex[1]:>11.0f}{rex[2]:>16.0f}")
    print(f"ratio rexlab/SB3 {rex[0] / sb3[0]:.2f} (per CPU-s {rex[1] / sb3[1]:.2f}, rollouts {rex[2] / sb3[2]:.2f})   "
          f"rexlab/raw {rex[0] / raw[0]:.3f}   SB3/raw {sb3[0] / raw[0]:.3f}")


if __name__ == "__main__":
    main()
