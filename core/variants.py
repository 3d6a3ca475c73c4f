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
command line still win over them. A variant (or a value in it) that is a whole plugin node, with a
`_target_` other than the node's current one, replaces that node whole instead of merging into it: none
of the old plugin's keys stay, only those the preset or the command line set under the node (`env=text`
swaps PPO for the text PPO, and the control noise injection for the text one, each variant spelling out
every field it needs). The variants of the replaced node's own file still apply after it (a `debug:`
entry meant for the control plugin meets the text one too: its `debug+text:` entry then wins). Hydra
composes each file as usual; `resolve_variants` runs on the composed config before anything reads it, so a newcomer
adding an env or a plugin writes one YAML file (and one Python file): no routing elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
VARIANTS = "variants"
CORE_KEYS = {"init"}
"""Keys core reads from a group's node, never passed to the plugin (`policy.init`, `reward.init`)."""


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


def _raw(node: DictConfig, path: str) -> tuple[str, Any] | None:
    """The value at dotted `path` under `node` as written (interpolations unresolved, containers as plain data),
    with the path it was read at: the interpolation's own key where one lies on the way; None if absent."""
    parts = path.split(".")
    for n, part in enumerate(parts):
        if not isinstance(node, DictConfig) or part not in node:
            return None
        child = node._get_node(part)
        if n == len(parts) - 1 or OmegaConf.is_interpolation(node, part) or not isinstance(child, DictConfig):
            if isinstance(child, DictConfig | ListConfig) and not OmegaConf.is_interpolation(node, part):
                return ".".join(parts[:n + 1]), OmegaConf.to_container(child)
            return ".".join(parts[:n + 1]), child._value()  # type: ignore[union-attr]
        node = child
    return None


class Explicit(set[str]):
    """The keys presets and the command line set (`direct`), with those whose value interpolates one of them (a
    `ppo.learning_rate=...` reaches every `hparams: ${oc.select:ppo,null}`): a variant merges into none of them,
    but a node another plugin replaces keeps only the direct ones (the new plugin brings its own interpolations)."""

    def __init__(self, direct: Iterable[str], derived: Iterable[str] = ()) -> None:
        self.direct = set(direct)
        super().__init__(self.direct | set(derived))


def _replacement(variant: DictConfig, current: DictConfig, key: str, explicit: set[str]) -> dict[str, Any]:
    """A variant's whole plugin node replacing `current` (at dotted `key`) as plain data, with the keys core
    reads itself (`policy.init`) and the values of the keys the preset or the command line set under `key`
    (themselves, not through an interpolation) kept from `current`."""
    replacement = OmegaConf.create(OmegaConf.to_container(variant))
    for name in sorted(CORE_KEYS & set(map(str, current)) - set(map(str, replacement))):
        replacement[name] = _raw(current, name)[1]  # type: ignore[index]
    for sub in sorted(k for k in getattr(explicit, "direct", explicit) if k.startswith(key + ".")):
        kept = _raw(current, sub[len(key) + 1:])
        if kept is not None:
            OmegaConf.update(replacement, kept[0], kept[1], merge=False, force_add=True)
    return {str(k): v for k, v in OmegaConf.to_container(replacement).items()}  # type: ignore[union-attr]


def _replaces(variant: Any, current: Any, key: str, explicit: set[str]) -> bool:
    """Whether `variant` is a plugin node of another class than `current`'s (whose `_target_` no preset or
    command line set), so it replaces the node rather than merging into it."""
    return (isinstance(variant, DictConfig) and isinstance(current, DictConfig) and "_target_" in variant
            and variant.get("_target_") != current.get("_target_") and not _explicit(f"{key}._target_", explicit))


def _merge(node: DictConfig, variant: DictConfig, key: str, explicit: set[str]) -> None:
    for name in map(str, variant):
        full, value = f"{key}.{name}", variant._get_node(name)
        if _explicit(full, explicit):
            continue
        current = node._get_node(name) if name in node else None
        interpolated = name in node and OmegaConf.is_interpolation(node, name)
        if isinstance(value, DictConfig) and isinstance(current, DictConfig) and not interpolated:
            if _replaces(value, current, full, explicit):
                node[name] = _replacement(value, current, full, explicit)
            else:
                _merge(current, value, full, explicit)
            continue
        node[name] = OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value


def _visit(node: DictConfig, key: str, names: list[str], explicit: set[str]) -> None:
    if VARIANTS in node:
        variants = node[VARIANTS]
        with open_dict(node):
            del node[VARIANTS]
            for name in names:
                variant = variants.get(name) if isinstance(variants, DictConfig) else None
                if variant is None:
                    continue
                if _replaces(variant, node, key, explicit):  # another plugin in this node's place
                    replacement = _replacement(variant, node, key, explicit)
                    for old in list(map(str, node)):
                        del node[old]
                    for new, value in replacement.items():
                        node[new] = value
                else:
                    _merge(node, variant, key, explicit)
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
