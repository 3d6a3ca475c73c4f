"""Gymnasium environments (classic control here; MuJoCo and Atari build on the same class)."""

from __future__ import annotations

import copy
import logging
import os
import pickle
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.pendulum import PendulumEnv
from gymnasium.vector import AutoresetMode

from core.interfaces import Environment

logging.getLogger("OpenGL.acceleratesupport").setLevel(logging.WARNING)  # "No OpenGL_accelerate module loaded"
# MuJoCo renders headless through EGL here (its default GLFW needs a display; OSMesa fails); set
# before any MuJoCo env is made. A user's own MUJOCO_GL wins.
os.environ.setdefault("MUJOCO_GL", "egl")
# pygame (classic-control rendering) draws off-screen; without this SDL looks for a display and
# prints "XDG_RUNTIME_DIR is invalid" on every video.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
_mujoco_warnings: set[str] = set()
log = logging.getLogger(__name__)


def _warn_once(message: str) -> None:
    """MuJoCo prints its warnings on every model load (e.g. gymnasium's HalfCheetah XML uses the
    deprecated 'settotalmass'), once per vectorised copy; log each distinct one once instead."""
    if message not in _mujoco_warnings:
        _mujoco_warnings.add(message)
        logging.getLogger("mujoco").warning(message.strip())


try:
    import mujoco

    mujoco.set_mju_user_warning(_warn_once)
except ImportError:  # MuJoCo envs unavailable; classic control still works
    mujoco = None


def space_kind(space: gym.Space, role: str) -> str:
    """Classify a gymnasium space as rexlab's observation or action kind."""
    if isinstance(space, gym.spaces.Discrete):
        return "discrete"
    if isinstance(space, gym.spaces.Box):
        if role == "action":
            return "continuous"
        return "vector" if len(space.shape) == 1 else "image"
    raise ValueError(f"unsupported {role} space {space}")


class GymEnv(Environment):
    """A registered gymnasium environment, vectorised synchronously (CPU-light envs step faster in
    one process than across processes on 2 cores).

    id: gymnasium id, e.g. "CartPole-v1". name: the short name used in plots and run names.
    max_episode_steps: override the registered time limit (None keeps it). kwargs: passed to gym.make.
    """

    def __init__(self, id: str, name: str, max_episode_steps: int | None = None,
                 kwargs: dict[str, Any] | None = None) -> None:
        self.id = id
        self.name = name
        self.max_episode_steps = max_episode_steps
        self.kwargs = dict(kwargs or {})
        probe = self._make()
        self._obs_space, self._act_space = probe.observation_space, probe.action_space
        probe.close()
        self.observation_kind = space_kind(self._obs_space, "observation")
        self.action_kind = space_kind(self._act_space, "action")

    def _make(self) -> gym.Env:
        return gym.make(self.id, max_episode_steps=self.max_episode_steps, **self.kwargs)

    def make_render_env(self) -> gym.Env:
        return gym.make(self.id, max_episode_steps=self.max_episode_steps, render_mode="rgb_array", **self.kwargs)

    def frames(self, obs: np.ndarray) -> np.ndarray | None:
        """Each observation's state put into a rendering copy (classic control: the state is the observation,
        Pendulum's angle from its cosine and sine; MuJoCo: positions and velocities, the excluded x/y
        positions at 0, which the tracking camera does not show) and rendered; None for other envs."""
        try:
            env = self.make_render_env()
        except Exception as err:  # e.g. MuJoCo without a working GL backend
            log.warning("env=%s cannot render (%s: %s)", self.name, type(err).__name__, err)
            return None
        try:
            env.reset(seed=0)
            setter = _state_setter(env.unwrapped, obs.shape[1:])
            if setter is None:
                return None
            shown = []
            for o in obs:
                setter(np.asarray(o, dtype=np.float64))
                shown.append(np.asarray(env.render(), dtype=np.uint8))
            return np.stack(shown)
        except Exception as err:
            log.warning("env=%s cannot draw a state from its observation (%s: %s)", self.name, type(err).__name__, err)
            return None
        finally:
            env.close()

    def make_vec(self, num_envs: int) -> gym.vector.VectorEnv:
        return gym.vector.SyncVectorEnv([self._make] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP)

    def snapshot(self, envs: gym.vector.VectorEnv) -> bytes | None:
        """The vector env pickled, with each MuJoCo copy's simulator state and random generator: gymnasium's
        MuJoCo envs pickle as their constructor arguments only (EzPickle), so these ride along."""
        sims = [_mujoco_state(sub.unwrapped) for sub in getattr(envs, "envs", [])]
        try:
            return pickle.dumps((envs, sims))
        except (TypeError, pickle.PicklingError, AttributeError):
            return None

    def restore(self, snapshot: Any) -> gym.vector.VectorEnv:
        envs, sims = pickle.loads(snapshot)
        for sub, sim in zip(getattr(envs, "envs", []), sims, strict=False):
            if sim is not None:
                u = sub.unwrapped
                state, u._np_random = sim
                mujoco.mj_setState(u.model, u.data, state, mujoco.mjtState.mjSTATE_INTEGRATION)
                mujoco.mj_forward(u.model, u.data)
        return envs

    @property
    def observation_space(self) -> gym.Space:
        return self._obs_space

    @property
    def action_space(self) -> gym.Space:
        return self._act_space


def _state_setter(env: Any, obs_shape: tuple[int, ...]) -> Callable[[np.ndarray], None] | None:
    """A function that puts the state behind one observation into `env` (unwrapped), or None where the
    observation does not determine what is drawn."""
    if isinstance(env, PendulumEnv):  # obs = (cos th, sin th, th dot); the torque arrow is not observed
        def pendulum(o: np.ndarray) -> None:
            env.state, env.last_u = np.array([np.arctan2(o[1], o[0]), o[2]]), None
        return pendulum
    if mujoco is not None and isinstance(getattr(env, "data", None), mujoco.MjData):
        nq, nv, dim = env.model.nq, env.model.nv, int(np.prod(obs_shape))
        hidden = nq + nv - dim  # positions the observation leaves out (Hopper, HalfCheetah: x; Ant: x, y)
        if not 0 <= hidden <= 2:
            return None
        def robot(o: np.ndarray) -> None:
            env.set_state(np.concatenate([np.zeros(hidden), o[: nq - hidden]]), o[nq - hidden :])
        return robot
    if getattr(env, "state", None) is not None and np.shape(env.state) == obs_shape:  # CartPole, MountainCar
        def plain(o: np.ndarray) -> None:
            env.state = o.copy()
        return plain
    return None


def _mujoco_state(env: gym.Env) -> tuple[Any, Any] | None:
    """A MuJoCo env's full integration state and its random generator (None for other envs)."""
    if mujoco is None or not isinstance(getattr(env, "data", None), mujoco.MjData):
        return None
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(env.model, spec))  # type: ignore[attr-defined]
    mujoco.mj_getState(env.model, env.data, state, spec)  # type: ignore[attr-defined]
    return state, copy.deepcopy(env.np_random)
