"""Settings that depend on the env or the budget, kept in the plugin's own YAML file.

A plugin's config file may end with a `variants:` block whose entries replace some of its settings for
one env option, one budget, or one budget with one env:

    variants:
      atari:                 # env=atari
        ensemble_size: 1
      debug:                 # budget=debug (experiment=debug)
        num_pairs: 200
      debug+atari:           # both
        num_pairs: 64

They apply in that order (env, budget, budget+env) over the file's own values, in every plugin node of
the composed config, nested ones included, parent before children; presets (experiment=...) and the
command line still win over them. A variant value that is a whole plugin node (with a `_target_` other
than the current one) replaces the node, as `env=text` swaps PPO for the text PPO. Hydra composes each
file as usual; `resolve_variants` runs on the composed config before anything reads it, so a newcomer
adding an env or a plugin writes one YAML file (and one Python file): no routing elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
VARIANTS = "variants"


def preset_keys(preset: str | None) -> set[str]:
    """Every dotted key of a value the preset conf/experiment/<preset>.yaml sets (not the nodes above them),
    with the presets it builds on."""
    file = CONF_DIR / "experiment" / f"{preset}.yaml"
    if not preset or not file.exists():
        return set()
    conf = OmegaConf.load(file)
    assert isinstance(conf, DictConfig)
    keys: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            if k == "defaults":
                continue
            if isinstance(v, DictConfig):
                walk(v, f"{prefix}{k}.")
            else:
                keys.add(prefix + str(k))

    walk(conf, "")
    for base in conf.get("defaults", []):
        if isinstance(base, str) and base != "_self_":
            keys |= preset_keys(base)
    return keys


def override_keys(overrides: Iterable[str]) -> set[str]:
    """The dotted keys command-line overrides set (`reward.lr=1e-3`, `+reward.x=1`), not group choices."""
    keys = set()
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key and not key.startswith("hydra") and not (CONF_DIR / key).is_dir():
            keys.add(key)
    return keys


def _explicit(key: str, explicit: set[str]) -> bool:
    """Whether `key` or a node above it was set by a preset or the command line."""
    parts = key.split(".")
    return any(".".join(parts[:n]) in explicit for n in range(1, len(parts) + 1))


def _merge(node: DictConfig, variant: DictConfig, key: str, explicit: set[str]) -> None:
    for name in map(str, variant):
        full, value = f"{key}.{name}", variant._get_node(name)
        if _explicit(full, explicit):
            continue
        current = node._get_node(name) if name in node else None
        if isinstance(value, DictConfig) and isinstance(current, DictConfig) and not OmegaConf.is_interpolation(
                node, name) and value.get("_target_", current.get("_target_")) == current.get("_target_"):
            _merge(current, value, full, explicit)
            continue
        replacement = OmegaConf.create(OmegaConf.to_container(value)) if isinstance(value, DictConfig) else value
        if isinstance(replacement, DictConfig) and isinstance(current, DictConfig):
            for sub in [k for k in explicit if k.startswith(full + ".")]:  # the user's keys under it stay
                OmegaConf.update(replacement, sub[len(full) + 1:], OmegaConf.select(current, sub[len(full) + 1:]),
                                 force_add=True)
        node[name] = replacement


def _visit(node: DictConfig, key: str, names: list[str], explicit: set[str]) -> None:
    if VARIANTS in node:
        variants = node[VARIANTS]
        with open_dict(node):
            del node[VARIANTS]
            for name in names:
                if isinstance(variants, DictConfig) and variants.get(name) is not None:
                    _merge(node, variants[name], key, explicit)
    for name in list(map(str, node)):
        child = node._get_node(name)
        if isinstance(child, DictConfig) and not OmegaConf.is_interpolation(node, name):
            _visit(child, f"{key}.{name}" if key else str(name), names, explicit)


def resolve_variants(cfg: DictConfig, env: str, budget: str, explicit: set[str]) -> DictConfig:
    """The composed config with every `variants:` block applied for this env and budget option and removed
    (a new config; `cfg` is left as it was). explicit: keys presets and the command line set."""
    out = OmegaConf.create(OmegaConf.to_container(cfg))  # interpolations kept, unresolved
    assert isinstance(out, DictConfig)
    with open_dict(out):
        _visit(out, "", [env, budget, f"{budget}+{env}"], explicit)
    return out
