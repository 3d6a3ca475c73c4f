"""Atari 2600 games through the Arcade Learning Environment (ale-py), preprocessed as in DQN/PPO.

Each agent step repeats the action for 4 emulator frames (max-pooling the last two), frames are
84x84 grayscale, the last 4 are stacked: observations (4, 84, 84) uint8. Resets take up to 30
no-op steps and press FIRE where the game needs it. Sticky actions (repeat probability 0.25) are
ALE v5's default (Machado et al. 2018). The true reward is the game score, unclipped; no episode
ends on a life loss. This is what `gym.make("ALE/<Game>-v5", frameskip=1)` + `AtariPreprocessing`
+ `FrameStackObservation(4)` computes, run by ale-py's own C++ vector environment, which steps
about twice as fast here as gymnasium's wrappers in a SyncVectorEnv (bench/).

The score and lives are masked out of what a learned reward sees (T-REX, Brown et al. 2019: "we
mask the score and number of lives left"), with the rows the T-REX reference code blanks per game.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import ale_py
import gymnasium as gym
import numpy as np
from ale_py import roms
from ale_py.vector_env import AtariVectorEnv
from gymnasium.vector import AutoresetMode

from core.interfaces import Environment

log = logging.getLogger(__name__)
gym.register_envs(ale_py)  # the ALE/<Game>-v5 ids, for rendering

# Rows of the 84x84 frame holding score and lives, (top, bottom), as masked by the T-REX code.
SCORE_ROWS: dict[str, tuple[int, int]] = {
    "breakout": (10, 0), "pong": (10, 0), "space_invaders": (10, 0), "beam_rider": (16, 11),
    "enduro": (0, 14), "hero": (0, 30), "qbert": (12, 0), "seaquest": (12, 16), "ms_pacman": (0, 15),
    "video_pinball": (15, 0), "montezuma_revenge": (10, 0),
}


def rom_name(game: str) -> str:
    """"Breakout", "SpaceInvaders" or "space_invaders" -> ale-py's ROM id "space_invaders"."""
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", game).lower() if game != game.lower() else game
    if name not in roms.get_all_rom_ids():
        close = [r for r in roms.get_all_rom_ids() if r.startswith(name[:3])]
        raise ValueError(f"env.game={game!r}: no such Atari ROM in ale-py (ROM id {name!r}); "
                         f"similar: {close or 'none'}; all ids: ale_py.roms.get_all_rom_ids()")
    return name


class AtariEnv(Environment):
    """An Atari game, preprocessed (84x84 gray, frame skip 4, 4-frame stack).

    game: the game, as in ALE ids ("Breakout", "Pong", "SpaceInvaders"; snake case works too).
    max_episode_steps: agent steps before truncation (each is 4 frames; ALE's default 27000 = 108k frames).
    repeat_action_probability: sticky actions (0.25 in ALE v5; 0 for the deterministic v4 setting).
    mask_rows: (top, bottom) rows of each 84x84 frame hidden from learned rewards; null takes the
        T-REX table (SCORE_ROWS) and masks nothing, with a warning in the log, for games not in it.
    """

    observation_kind = "image"
    action_kind = "discrete"

    def __init__(self, game: str = "Breakout", max_episode_steps: int = 27_000,
                 repeat_action_probability: float = 0.25, mask_rows: tuple[int, int] | None = None,
                 name: str | None = None) -> None:
        self.game = rom_name(game)
        self.name = name or self.game
        self.max_episode_steps = int(max_episode_steps)
        self.repeat_action_probability = float(repeat_action_probability)
        self._obs_space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
        probe = self._vector(1)
        self._act_space = probe.single_action_space
        probe.close()
        rows = tuple(mask_rows) if mask_rows is not None else SCORE_ROWS.get(self.game)
        if rows is None:
            log.warning("env.game=%s: no score/lives rows known for this game; the learned reward sees the "
                        "whole frame (set env.mask_rows=[top,bottom] to hide them)", game)
        top, bottom = rows or (0, 0)
        mask = np.zeros((84, 84), dtype=bool)
        mask[:top] = True
        if bottom:
            mask[-bottom:] = True
        self.reward_input_mask = mask

    def _vector(self, num_envs: int) -> gym.vector.VectorEnv:
        return AtariVectorEnv(self.game, num_envs, num_threads=min(num_envs, 2),
                              max_num_frames_per_episode=4 * self.max_episode_steps,
                              repeat_action_probability=self.repeat_action_probability,
                              autoreset_mode=AutoresetMode.SAME_STEP, reward_clipping=False,
                              episodic_life=False, noop_max=30, frameskip=4, stack_num=4)

    def make_render_env(self) -> gym.Env:
        """The same game and preprocessing through gymnasium's wrappers, rendering the full-colour
        screen (the C++ vector env does not render)."""
        game_id = "ALE/" + "".join(part.capitalize() for part in self.game.split("_")) + "-v5"
        env = gym.make(game_id, frameskip=1, repeat_action_probability=self.repeat_action_probability,
                       max_num_frames_per_episode=4 * self.max_episode_steps, render_mode="rgb_array")
        env = gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84)
        return gym.wrappers.FrameStackObservation(env, 4)

    def make_vec(self, num_envs: int) -> gym.vector.VectorEnv:
        return self._vector(num_envs)

    def frames(self, obs: np.ndarray) -> np.ndarray:
        """The newest frame of each observation's stack, gray, at twice its size: what the agent (and the
        learned reward) sees."""
        newest = np.asarray(obs)[:, -1].repeat(2, axis=1).repeat(2, axis=2)
        return np.repeat(newest[..., None], 3, axis=3).astype(np.uint8)

    def signature(self) -> dict[str, Any]:
        """Environment.signature() and the game: a Pong policy has Space Invaders' six actions too."""
        return super().signature() | {"game": self.game}

    @property
    def observation_space(self) -> gym.Space:
        return self._obs_space

    @property
    def action_space(self) -> gym.Space:
        return self._act_space
