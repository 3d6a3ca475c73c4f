"""The demonstrations file format (.npz), read by preference=ranked_demos and written by every run
that collects demonstrations (artifact checkpoints/demos.npz), so one run's demos feed another.

Arrays (N trajectories, their lengths summing to S):
  obs      (S, *obs_shape)  observations, trajectories concatenated in order
  lengths  (N,) int         steps of each trajectory
  actions  (S, ...)         optional
  rewards  (S,)             optional true rewards per step
  returns  (N,)             optional true return per trajectory (higher is better)
  ranks    (N,) int         optional explicit ranking, 0 = best (overrides returns for ranking)
At least one of rewards, returns, ranks must be present.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from core.errors import NamedError
from core.types import Trajectory


class DemoFileError(NamedError, ValueError):
    """A demonstrations file that cannot be used; the message names the file and the field."""


def save_demos(path: Path, trajs: list[Trajectory], scores: np.ndarray | None = None) -> None:
    """Write trajectories (with their rewards, and `returns` = scores if given) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "obs": np.concatenate([t.obs for t in trajs]),
        "lengths": np.array([len(t) for t in trajs]),
        "actions": np.concatenate([t.actions for t in trajs]),
        "rewards": np.concatenate([t.rewards for t in trajs]),
    }
    if scores is not None:
        arrays["returns"] = np.asarray(scores, dtype=np.float64)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]


def load_demos(path: str | Path) -> tuple[list[Trajectory], np.ndarray]:
    """Read a demonstrations file -> (trajectories, scores with higher = better)."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise DemoFileError(f"demonstrations file {path} holds a single array, not an .npz archive of "
                                f"named arrays (obs, lengths, ...)")
        with data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise DemoFileError(f"demonstrations file {path} does not exist") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DemoFileError(f"demonstrations file {path} is not a readable .npz archive ({err})") from None

    def need(key: str) -> np.ndarray:
        if key not in arrays:
            raise DemoFileError(f"demonstrations file {path}: missing array '{key}' (has {sorted(arrays)})")
        return arrays[key]

    for key, values in arrays.items():
        if values.ndim == 0 or values.dtype.kind not in "biuf":
            raise DemoFileError(f"demonstrations file {path}: array '{key}' must hold numbers, one row per step or "
                                f"trajectory; got {'a scalar' if values.ndim == 0 else values.dtype}")
    for key, values in arrays.items():  # a nan trains a nan reward, or ranks by file order
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            first = tuple(int(i) for i in np.argwhere(~np.isfinite(values))[0])
            raise DemoFileError(f"demonstrations file {path}: array '{key}' holds a non-finite value "
                                f"({values[first]}) at index {first if len(first) > 1 else first[0]}")
    obs, raw_lengths = need("obs"), need("lengths")
    if raw_lengths.ndim != 1 or len(raw_lengths) < 2 or not np.array_equal(raw_lengths, np.round(raw_lengths)):
        raise DemoFileError(f"demonstrations file {path}: 'lengths' must list at least 2 trajectories (their whole "
                            f"numbers of steps), got {raw_lengths[:5]} (shape {raw_lengths.shape})")
    lengths = raw_lengths.astype(np.int64)
    total = int(lengths.sum())
    if (lengths <= 0).any() or total != len(obs):
        raise DemoFileError(f"demonstrations file {path}: 'lengths' must be positive and sum to len(obs) "
                            f"= {len(obs)}, got sum {total}")
    for key in ("actions", "rewards"):
        if key in arrays and len(arrays[key]) != total:
            raise DemoFileError(f"demonstrations file {path}: '{key}' has {len(arrays[key])} rows, "
                                f"expected {total} (sum of 'lengths')")
    for key in ("returns", "ranks"):
        if key in arrays and arrays[key].shape != lengths.shape:
            raise DemoFileError(f"demonstrations file {path}: '{key}' has shape {arrays[key].shape}, "
                                f"expected ({len(lengths)},), one per trajectory")
    if not {"rewards", "returns", "ranks"} & set(arrays):
        raise DemoFileError(f"demonstrations file {path}: needs 'rewards', 'returns' or 'ranks' to rank by")
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    actions = arrays.get("actions", np.zeros(total))
    rewards = arrays.get("rewards", np.full(total, np.nan)).astype(np.float32)
    if obs.dtype != np.uint8:  # frames stay uint8; vectors become float32
        obs = obs.astype(np.float32)
    trajs = [Trajectory(obs[a:b], actions[a:b], rewards[a:b], {"source": str(path)})
             for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if "rewards" not in arrays and "returns" in arrays:  # true returns known per trajectory only
        for traj, value in zip(trajs, arrays["returns"], strict=True):
            traj.info["true_return"] = float(value)
    if "ranks" in arrays:
        scores = -arrays["ranks"].astype(np.float64)
    elif "returns" in arrays:
        scores = arrays["returns"].astype(np.float64)
    else:
        scores = np.array([t.true_return for t in trajs])
    return trajs, scores
