"""Artifacts: what stages hand each other, saved under the run's output folder (checkpoints/) so that a
resumed run, a later stage or another run (`policy.init=PATH`, `reward.init=PATH`) loads them.

    demonstrations   checkpoints/demos.npz (core/demo_files.py; control tasks)
    preferences      checkpoints/preferences.pkl (whole, for loading) and, for text, preferences.jsonl
                     (pair lines in the preference-file format, for people and for preference=file)
    reward model     checkpoints/reward/ (the model's own files) with reward.yaml (its manifest)
    control policy   checkpoints/<stage>.pt with its config checkpoints/<stage>.yaml
    language model   checkpoints/<stage>/, a Hugging Face save_pretrained folder (from_pretrained opens
                     it; env.model=.../checkpoints/policy takes it as a model), with rexlab.yaml in it
    evaluation       checkpoints/evaluation.json (the final eval/* metrics)

A manifest (reward.yaml, <stage>.yaml, rexlab.yaml) says what the artifact is (`kind`), the task it was
learned on (`env`: Environment.signature()) and how to load it (`load`: a `_target_` node that core
instantiates with the task's spaces as keyword arguments). Loading one into a task it does not fit (a
CartPole policy into Hopper, a control reward into text) is refused naming both, before any work.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from core.compat import IncompatibleError
from core.demo_files import save_demos
from core.interfaces import Environment, Policy, RewardModel, SavedPolicy
from core.types import Preferences, Response, Trajectory

CONTROL_POLICY, LANGUAGE_MODEL, REWARD_MODEL = "control policy", "language model", "reward model"


def replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """write(a temporary path beside `path`), then rename it to `path`: a kill leaves the old file or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    write(partial)
    os.replace(partial, path)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through replace_atomically."""
    replace_atomically(path, lambda partial: partial.write_bytes(data))


def _manifest_path(path: Path) -> Path:
    """Where the manifest of the artifact at `path` (no suffix) lies: inside a folder, else beside the file."""
    return path / "rexlab.yaml" if path.is_dir() else path.parent / f"{path.name}.yaml"


def _check_fits(manifest: dict[str, Any], env: Environment, what: str) -> None:
    saved, here = manifest.get("env", {}), env.signature()
    differ = [k for k in sorted(set(saved) | set(here)) if k != "env" and saved.get(k) != here.get(k)]
    if differ:
        def show(sig: dict[str, Any]) -> str:
            return ", ".join(f"{k} {sig.get(k)}" for k in differ)

        raise IncompatibleError(f"{what} holds a {manifest.get('kind', 'model')} learned on env={saved.get('env')} "
                                f"({show(saved)}); this run's env={here['env']} has {show(here)}")


# ---------------------------------------------------------------- policies
def save_policy(policy: Policy, path: Path, env: Environment) -> SavedPolicy:
    """Save `policy` at `path` (no suffix) with its manifest; returns the handle later stages start from."""
    load = policy.save(path)
    kind = LANGUAGE_MODEL if path.is_dir() else CONTROL_POLICY
    manifest = {"kind": kind, "env": env.signature(), "load": load}
    write_atomic(_manifest_path(path), OmegaConf.to_yaml(OmegaConf.create(manifest)).encode())
    return SavedPolicy(path)


def read_manifest(path: Path) -> dict[str, Any]:
    file = _manifest_path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no saved policy or model there (looked for {file})")
    manifest = OmegaConf.to_container(OmegaConf.load(file))
    assert isinstance(manifest, dict)
    return {str(k): v for k, v in manifest.items()}


def check_policy(saved: SavedPolicy, env: Environment, what: str) -> None:
    """Refuse a saved policy that does not fit `env` (IncompatibleError naming both)."""
    _check_fits(read_manifest(saved.path), env, what)


def load_policy(saved: SavedPolicy, env: Environment) -> Policy:
    """The policy saved at `saved.path`, built for `env`'s spaces (its manifest's `load` node)."""
    manifest = read_manifest(saved.path)
    _check_fits(manifest, env, str(saved.path))
    node = dict(manifest["load"])
    node["path"] = str(saved.path.parent / node["path"])
    with torch.random.fork_rng():  # building the network draws initial weights: the run's random stream stays as it was
        return instantiate(node, observation_space=env.observation_space, action_space=env.action_space)


def find_policy(location: Path, stage: str = "policy") -> SavedPolicy:
    """A saved policy at `location`: a run's output folder (its checkpoints/<stage>), or the artifact itself."""
    for path in (location / "checkpoints" / stage, location):
        if _manifest_path(path).is_file():
            return SavedPolicy(path)
    raise FileNotFoundError(f"{location}: neither a run folder with a saved {stage} (checkpoints/{stage}.yaml or "
                            f"checkpoints/{stage}/rexlab.yaml) nor a saved policy itself")


# ---------------------------------------------------------------- reward models
def save_reward(reward: RewardModel, folder: Path, env: Environment, target: str) -> None:
    """reward.save(folder) and its manifest folder/reward.yaml (`target`: the plugin's `_target_`)."""
    reward.save(folder)
    manifest = {"kind": REWARD_MODEL, "env": env.signature(), "target": target}
    write_atomic(folder / "reward.yaml", OmegaConf.to_yaml(OmegaConf.create(manifest)).encode())


def find_reward(location: Path) -> Path:
    """A saved reward model's folder at `location`: a run's output folder (its checkpoints/reward) or the folder."""
    for folder in (location / "checkpoints" / "reward", location):
        if (folder / "reward.yaml").is_file():
            return folder
    raise FileNotFoundError(f"{location}: neither a run folder with a saved reward model (checkpoints/reward/"
                            f"reward.yaml) nor a reward model's folder itself")


def check_reward(folder: Path, env: Environment, target: str, what: str) -> None:
    """Refuse the reward model saved in `folder` if another plugin than `target` (this run's reward option)
    made it, or on another task (IncompatibleError naming both)."""
    loaded = OmegaConf.to_container(OmegaConf.load(folder / "reward.yaml"))
    assert isinstance(loaded, dict)
    manifest = {str(k): v for k, v in loaded.items()}
    if manifest["target"] != target:
        raise IncompatibleError(f"{what} holds a {manifest['target']} reward model; this run's reward is {target} "
                                f"(choose the reward option that made it)")
    _check_fits(manifest, env, what)


def load_reward(reward: RewardModel, folder: Path, env: Environment, target: str, what: str) -> None:
    """Load the reward model saved in `folder` into `reward` (built from this run's config), after check_reward."""
    check_reward(folder, env, target, what)
    reward.load(folder)


# ---------------------------------------------------------------- preferences and demonstrations
LABEL_METADATA = ("annotator", "margin", "probability", "principle", "rationale")
"""What a label says besides its pair, kept in its chosen response's info and written with it."""


def save_preferences(prefs: Preferences, folder: Path, source_state: dict[str, Any]) -> None:
    """preferences.pkl (whole, with the source's state_dict) and the human-readable form: demos.npz for
    trajectories, preferences.jsonl for responses: one {"prompt", "chosen", "rejected"} line per pair in the
    preference-file format, with the label's metadata the chosen response carries (annotator, margin, a soft label's
    probability, AI feedback's principle and rationale), so preference=file reads it back."""
    write_atomic(folder / "preferences.pkl", pickle.dumps((prefs, source_state)))
    if prefs.demos and isinstance(prefs.demos[0], Trajectory):
        save_demos(folder / "demos.npz", prefs.demos, prefs.scores if prefs.demonstrations is None else None)
    elif prefs.items and isinstance(prefs.items[0], Response):
        items = prefs.items
        lines = [json.dumps({"prompt": items[i].prompt, "chosen": items[i].text, "rejected": items[j].text}
                            | {k: items[i].info[k] for k in LABEL_METADATA if items[i].info.get(k) is not None})
                 for i, j in prefs.pairs]
        write_atomic(folder / "preferences.jsonl", "".join(line + "\n" for line in lines).encode())


def load_preferences(folder: Path) -> tuple[Preferences, dict[str, Any]]:
    """What save_preferences wrote: the preferences and the source's state."""
    with open(folder / "preferences.pkl", "rb") as f:
        prefs, state = pickle.load(f)
    assert isinstance(prefs, Preferences)
    return prefs, state


def save_evaluation(metrics: dict[str, float], folder: Path) -> None:
    write_atomic(folder / "evaluation.json", json.dumps(metrics, indent=1).encode())


def load_evaluation(folder: Path) -> dict[str, float]:
    return {k: float(v) for k, v in json.loads((folder / "evaluation.json").read_text()).items()}


def best_demo_return(prefs: Preferences) -> float | None:
    """The best demonstration's true return (None for text, or where it is unknown)."""
    if not prefs.demos or not isinstance(prefs.demos[0], Trajectory):
        return None
    best = float(np.max([t.true_return for t in prefs.demos]))
    return best if np.isfinite(best) else None
