"""Capability checks: refuse an incompatible combination of plugins before any work starts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from core.errors import NamedError
from core.interfaces import Capabilities, Environment
from core.schema import HYDRA_KEYS, signature_types
from core.variants import CONF_DIR, CORE_KEYS, VARIANTS, preset_keys


class IncompatibleError(NamedError, ValueError):
    """The chosen plugins cannot work together; the message names them and what would work."""


def plugin_class(node: Any) -> Any:
    """The class a config node builds (`_target_`)."""
    return get_class(OmegaConf.select(node, "_target_"))  # type: ignore[arg-type]


def options_of(group: str) -> dict[str, Any]:
    """Every option of a config group (conf/<group>/*.yaml) and the class it builds."""
    out = {}
    for file in sorted((CONF_DIR / group).glob("*.yaml")):
        target = OmegaConf.select(OmegaConf.load(file), "_target_")
        if target:
            out[file.stem] = get_class(target)
    return out


def _fits_env(caps: Capabilities, env: Environment) -> bool:
    return env.observation_kind in caps.observations and env.action_kind in caps.actions


def _per_env_class(group: str, env_option: str, option: str) -> Any | None:
    """The class an option's env variant (`variants: <env>: _target_:` in conf/<group>/<option>.yaml) swaps in."""
    file = CONF_DIR / group / f"{option}.yaml"
    target = OmegaConf.select(OmegaConf.load(file), f"{VARIANTS}.{env_option}._target_") if file.exists() else None
    return get_class(target) if target else None


def _alternatives(group: str, env: Environment, env_option: str) -> str:
    ok = [name for name, cls in options_of(group).items()
          if _fits_env((_per_env_class(group, env_option, name) or cls).capabilities, env)]
    return f"{group}={','.join(ok)}" if ok else f"no {group} option yet"


def used_groups(classes: dict[str, Any], reward_loaded: bool = False) -> tuple[str, ...]:
    """The config groups a run with these plugin classes (group -> class) uses: env and policy always; the
    reward where the optimizer uses one (PPO; not BC, SFT or pretraining); the preference source where that
    reward learns in this run (not loaded with reward.init, unless an online source refits it) or the
    optimizer learns from demonstrations or from the preferences themselves (DPO)."""
    caps = {group: cls.capabilities for group, cls in classes.items()}
    reward = caps["policy"].uses_reward
    learns = (reward and caps["reward"].needs_preferences
              and (not reward_loaded or caps["preference"].queries_online))
    source = learns or caps["policy"].needs_demonstrations or caps["policy"].needs_preferences
    return ("env", "policy") + (("reward",) if reward else ()) + (("preference",) if source else ())


def check_compatible(env: Environment, choices: dict[str, str], classes: dict[str, Any],
                     used: tuple[str, ...] | None = None) -> None:
    """choices: group -> option name (env, reward, preference, policy); classes: group -> plugin class;
    used: the groups the run uses (None: used_groups(classes)).

    Raises IncompatibleError naming the parts and the options that would work.
    """
    where = f"env={choices['env']} (observations '{env.observation_kind}', actions '{env.action_kind}')"
    used = used_groups(classes) if used is None else used
    source_used = "preference" in used
    groups = [g for g in ("policy", "reward", "preference") if g in used]
    for group in groups:
        caps: Capabilities = classes[group].capabilities
        if not _fits_env(caps, env):
            raise IncompatibleError(
                f"{group}={choices[group]} cannot work with {where}: it supports observations "
                f"{sorted(caps.observations)} and actions {sorted(caps.actions)}. "
                f"With env={choices['env']} try {_alternatives(group, env, choices['env'])}." + "".join(
                    f" {note}" for note in caps.notes))
    source_caps: Capabilities = classes["preference"].capabilities
    if source_used and source_caps.queries_online:
        _check_online(choices, classes)
    for group in (g for g in ("policy", "reward") if g in used):
        if classes[group].capabilities.needs_demonstrations and not source_caps.provides_demonstrations:
            good = [n for n, c in options_of("preference").items() if c.capabilities.provides_demonstrations]
            raise IncompatibleError(
                f"{group}={choices[group]} learns from demonstrations, but preference={choices['preference']} "
                f"provides none; use preference={','.join(good)}." + "".join(
                    f" {note}" for note in classes[group].capabilities.notes))


ABLE = {"calls_back": "hands its current policy to a callback while it trains (for checkpoints)",
        "provides_demonstrations": "provides whole demonstration trajectories",
        "needs_demonstrations": "learns a policy from demonstrations (behavioral cloning)"}


def _plugin_children(node: DictConfig) -> list[tuple[str, DictConfig]]:
    """(key, node) of the plugins configured directly inside `node` (dict children with a `_target_`),
    without resolving interpolations (a key pointing at an unset value is no plugin)."""
    out = []
    for name in map(str, node):
        if name in HYDRA_KEYS:
            continue
        child = OmegaConf.select(node, name, throw_on_resolution_failure=False)
        if isinstance(child, DictConfig) and OmegaConf.select(child, "_target_", throw_on_resolution_failure=False):
            out.append((name, child))
    return out


def check_nested(cfg: DictConfig, env: Environment, choices: dict[str, str], groups: tuple[str, ...]) -> None:
    """The plugins configured inside others (preference.learner, reward.cloner, ...): each must work with
    the env, and have what its parent's `Capabilities.requires` asks of it. Raises IncompatibleError."""
    for group in groups:
        _check_children(OmegaConf.select(cfg, group), group, env, choices)


def _check_children(node: DictConfig, key: str, env: Environment, choices: dict[str, str]) -> None:
    parent = plugin_class(node)
    required = {name: (flag, group) for name, flag, group in getattr(parent, "capabilities", Capabilities()).requires}
    for name, child in _plugin_children(node):
        cls, where = plugin_class(child), f"{key}.{name}"
        caps = getattr(cls, "capabilities", None)
        if isinstance(caps, Capabilities) and not _fits_env(caps, env):
            raise IncompatibleError(
                f"{where} ({cls.__name__}) cannot work with env={choices['env']} (observations "
                f"'{env.observation_kind}', actions '{env.action_kind}'): it supports observations "
                f"{sorted(caps.observations)} and actions {sorted(caps.actions)}.")
        if name in required:
            flag, group = required[name]
            if not (isinstance(caps, Capabilities) and getattr(caps, flag)):
                good = [n for n, c in options_of(group).items() if getattr(c.capabilities, flag)]
                raise IncompatibleError(
                    f"{where} is {cls.__name__}, but {parent.__name__} needs a plugin there that "
                    f"{ABLE.get(flag, flag)}: one of {', '.join(f'conf/{group}/{n}.yaml' for n in good)}, as a "
                    f"whole node (in a config file's defaults: `- /{group}/{good[0] if good else '...'}@{name}`).")
        _check_children(child, where, env, choices)


def _unknown_fields(node: DictConfig, key: str, ignore: set[str] = frozenset()) -> dict[str, list[str]]:  # type: ignore[assignment]
    """{config key of a plugin: its keys the class it builds does not take}, for the node at `key` (it has a
    `_target_`) and the plugins nested in it; `ignore`: keys of the node core reads itself."""
    fields = signature_types(plugin_class(node))  # (following **kwargs: DREX passes T-REX's fields on)
    names = None if fields is None else set(fields)
    out: dict[str, list[str]] = {}
    unknown = [f"{key}.{k}" for k in map(str, node)
               if names is not None and k not in HYDRA_KEYS | ignore and k not in names]
    if unknown:
        out[key] = unknown
    for name, child in _plugin_children(node):
        out |= _unknown_fields(child, f"{key}.{name}")
    return out


def check_fields(cfg: DictConfig, choices: dict[str, str], groups: tuple[str, ...]) -> None:
    """Refuse config keys a plugin does not take (say, a T-REX preset's `reward.num_pairs` with
    reward=true) before anything is built, naming the keys, the class and the preset that set them."""
    for group in groups:
        for key, unknown in _unknown_fields(OmegaConf.select(cfg, group), group, CORE_KEYS).items():
            cls = plugin_class(OmegaConf.select(cfg, key)).__name__
            what = f"{group}={choices[group]}" if key == group and group in choices else key
            preset = choices.get("experiment") or "None"
            source = ""
            if preset != "None" and set(unknown) & preset_keys(preset):
                source = (f" experiment={preset} sets them for another {group} option; drop the preset and set "
                          f"what you need directly (e.g. policy.total_timesteps=...).")
            where = (f"conf/{group}/{choices[group]}.yaml and the files it includes" if group in choices
                     else "the option files (conf/policy/, conf/preference/, ...) it was composed from")
            raise IncompatibleError(f"{what} ({cls}) takes no field(s) {', '.join(unknown)}.{source} The fields "
                                    f"each option takes are in {where}.")


def _check_online(choices: dict[str, str], classes: dict[str, Any]) -> None:
    """An online source needs an optimizer that calls it back and a reward it can refit."""
    source = f"preference={choices['preference']} asks for preferences over the current policy while it trains"
    needs: dict[str, tuple[Callable[[Capabilities], bool], str]] = {
        "policy": (lambda caps: caps.calls_back, "never hands its current policy to a callback during training"),
        "reward": (lambda caps: caps.refits, "cannot be refit with the preferences that arrive")}
    for group, (has, why) in needs.items():
        if not has(classes[group].capabilities):
            good = [n for n, c in options_of(group).items() if has(c.capabilities)]
            raise IncompatibleError(f"{source}, but {group}={choices[group]} {why}; "
                                    f"use {group}={','.join(good) or '(none yet)'}.")
