"""Videos of a policy: one episode on a rendering copy of the task, saved as an animated GIF (shown
inline by the MLflow UI; Pillow comes with matplotlib, so no video codec is needed)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from core.interfaces import Environment, Policy

log = logging.getLogger(__name__)


def encode_gif(frames: list[np.ndarray] | np.ndarray, fps: int = 30) -> bytes:
    """RGB frames (T, H, W, 3) -> an animated GIF that loops forever, as bytes."""
    images = [Image.fromarray(np.asarray(f).astype(np.uint8)) for f in frames]
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)),
                   loop=0)
    return out.getvalue()


def record_episode(policy: Policy, env: Environment, path: Path, seed: int, max_steps: int = 1000,
                   fps: int = 30, deterministic: bool = False) -> tuple[Path | None, str]:
    """Roll out one episode (at most `max_steps` steps) rendering each step; returns the GIF's
    path and a note, or (None, why not) where the task cannot render (no renderer, no GL)."""
    try:
        render_env = env.make_render_env()
    except Exception as err:  # e.g. MuJoCo without a working GL backend
        return None, f"could not make a rendering env: {type(err).__name__}: {err}"
    if render_env is None:
        return None, f"env={env.name} does not render"
    frames: list[np.ndarray] = []
    steps, total = 0, 0.0
    try:
        obs, _ = render_env.reset(seed=seed)
        while steps < max_steps:
            frames.append(np.asarray(render_env.render()))
            action = policy.act(np.asarray(obs)[None], deterministic=deterministic)[0]
            obs, reward, terminated, truncated, _ = render_env.step(action)
            total, steps = total + float(reward), steps + 1
            if terminated or truncated:
                break
        frames.append(np.asarray(render_env.render()))
    except Exception as err:
        return None, f"rendering failed: {type(err).__name__}: {err}"
    finally:
        render_env.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_gif(frames, fps))
    return path, f"{steps} steps, true return {total:.1f}" + (" (cut at video.max_steps)" if steps >= max_steps else "")
