"""Typed config schemas: every plugin's fields, checked against the config before any work starts.

A plugin's schema is its `__init__` signature: each parameter's type, with a `Range` attached through
`typing.Annotated` where only some values make sense (the aliases below name the usual ones), e.g.

    def __init__(self, num_pairs: PositiveInt = 6000, lr: Positive = 5e-5, val_fraction: UnitOpen = 0.1)

Settings grouped in a dataclass (PPO's hparams) are checked field by field the same way, and plugins
nested in a plugin's node (`_target_`) against their own class. A value of the wrong type or outside its
range is refused with the config key the user sets (through interpolations such as `hparams: ${ppo}`),
the value and what is allowed: `ppo.gamma: 2: must be a number in [0, 1]`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from core.errors import NamedError


class ConfigError(NamedError, ValueError):
    """A config value the schema refuses; the message is `key: value: what is allowed`."""


@dataclass(frozen=True)
class Range:
    """Bounds of a number: ge (>=), gt (>), le (<=), lt (<); None: unbounded on that side."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def contains(self, x: float) -> bool:
        return not ((self.ge is not None and x < self.ge) or (self.gt is not None and x <= self.gt)
                    or (self.le is not None and x > self.le) or (self.lt is not None and x >= self.lt))

    def describe(self) -> str:
        low = f"[{_num(self.ge)}" if self.ge is not None else (f"({_num(self.gt)}" if self.gt is not None else None)
        high = f"{_num(self.le)}]" if self.le is not None else (f"{_num(self.lt)})" if self.lt is not None else None)
        if low and high:
            return f"in {low}, {high}"
        if low:
            return (">= " if low[0] == "[" else "> ") + low[1:]
        if high:
            return ("<= " if high[-1] == "]" else "< ") + high[:-1]
        return "any value"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
Positive = Annotated[float, Range(gt=0)]
NonNegative = Annotated[float, Range(ge=0)]
Unit = Annotated[float, Range(ge=0, le=1)]
"""A number in [0, 1] (a discount, a probability)."""
UnitOpen = Annotated[float, Range(ge=0, lt=1)]
"""A number in [0, 1) (a held-out fraction that leaves something to train on)."""
OpenUnit = Annotated[float, Range(gt=0, lt=1)]
"""A number in (0, 1)."""
LearningRate = Annotated[float, Range(gt=0, le=1)]
"""An optimizer's step size: in (0, 1] (larger ones only diverge: reward.lr=1e6 once trained to a loss of 1e23)."""


# ---------------------------------------------------------------- checking a value against a type
def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        base, *meta = args
        ranges = [m for m in meta if isinstance(m, Range)]
        return f"{_describe(base)} {ranges[0].describe()}" if ranges else _describe(base)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if tp is type(None):
        return "null"
    if origin in (list, tuple, Sequence):
        return f"a list, each {_describe(args[0])}" if args else "a list"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def _problems(value: Any, tp: Any, key: str, hints: dict[str, str]) -> list[str]:
    """Why `value` (plain Python, from the config) does not fit `tp`: messages `key: value: ...`; [] if it does.
    `hints`: dotted config keys -> the key to name instead (interpolation sources)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    shown = hints.get(key, key)
    bad = [f"{shown}: {_show(value)}: must be {_describe(tp)}"]
    if tp is Any or tp is inspect.Parameter.empty:
        return []
    if origin is Annotated:
        base, *meta = args
        inner = _problems(value, base, key, hints)
        if inner:
            return inner if _is_structured(base) else bad
        out_of_range = any(isinstance(m, Range) and not m.contains(value) for m in meta)
        return bad if out_of_range else []
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return [] if type(None) in args else bad
        structured = [a for a in args if _is_structured(a)]
        if isinstance(value, Mapping) and structured:
            return _problems(value, structured[0], key, hints)
        options = [a for a in args if a is not type(None)]
        return [] if any(not _problems(value, a, key, hints) for a in options) else bad
    if origin is Literal:
        return [] if value in args else bad
    if tp is type(None):
        return [] if value is None else bad
    if tp is bool:
        return [] if isinstance(value, bool) else bad
    if tp is int:
        return [] if isinstance(value, int) and not isinstance(value, bool) else bad
    if tp is float:  # (nan and inf are no setting)
        return [] if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) else bad
    if tp is str:
        return [] if isinstance(value, str) else bad
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            return bad
        if not args:
            return []
        return [p for i, v in enumerate(value) for p in _problems(v, args[0], f"{key}[{i}]", hints)]
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return [] if isinstance(value, Mapping) else bad
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            return bad
        return _check_fields(value, _dataclass_types(tp), key, hints, tp.__name__)
    if isinstance(tp, type) and isinstance(value, Mapping) and "_target_" in value:
        return check_plugin(value, key, hints)  # a nested plugin: its own class's schema
    return []  # a type the config cannot express (run-time objects): nothing to check


def _show(value: Any) -> str:
    """A config value as the user would write it (JSON where it is plain data)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _is_structured(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) and isinstance(tp, type)


def _resolve(annotation: Any, module: str) -> Any:
    """An annotation (a string under `from __future__ import annotations`) as a type; Any if it names
    something only imported for type checkers."""
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, vars(sys.modules[module]))  # noqa: S307 (the plugin's own annotation)
    except Exception:
        return Any


def _dataclass_types(cls: type) -> dict[str, Any]:
    return {f.name: _resolve(f.type, cls.__module__) for f in dataclasses.fields(cls)}


def signature_types(cls: type) -> dict[str, Any] | None:
    """A plugin class's `__init__` parameters and their types, following **kwargs to base classes'
    `__init__` (D-REX passes T-REX's fields on); None if it takes any keyword."""
    types_: dict[str, Any] = {}
    for klass in cls.__mro__:
        if klass is object:
            return types_
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()  # type: ignore[misc]
        for p in params:
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                types_.setdefault(p.name, _resolve(p.annotation, klass.__module__))
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return types_
    return None


HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _check_fields(values: Mapping[str, Any], types_: dict[str, Any], key: str, hints: dict[str, str],
                  owner: str) -> list[str]:
    out = []
    for name, value in values.items():
        if name in HYDRA_KEYS:
            continue
        full = f"{key}.{name}" if key else name
        if name not in types_:
            out.append(f"{hints.get(full, full)}: unknown; {owner} takes {', '.join(sorted(types_))}")
            continue
        out += _problems(value, types_[name], full, hints)
    return out


def check_plugin(values: Mapping[str, Any], key: str, hints: dict[str, str]) -> list[str]:
    """Problems of a plugin node's values (plain Python, `_target_` included) against its class's schema."""
    cls = get_class(values["_target_"])
    types_ = signature_types(cls)
    if types_ is None:
        return []
    return [p for name, value in values.items() if name not in HYDRA_KEYS and name in types_
            for p in _problems(value, types_[name], f"{key}.{name}", hints)]


def interpolation_sources(node: DictConfig, prefix: str = "") -> dict[str, str]:
    """Dotted keys whose value is an interpolation of another key (`hparams: ${ppo}`), mapped to the key
    it reads, children included (`policy.hparams.gamma` -> `ppo.gamma`): the key a user sets."""
    out: dict[str, str] = {}
    for k in map(str, node):
        name = f"{prefix}.{k}" if prefix else k
        if OmegaConf.is_interpolation(node, k):
            raw = str(node._get_node(k)._value())  # type: ignore[union-attr]
            match = re.fullmatch(r"\$\{(?:oc\.select:)?([\w.]+)(?:,[^}]*)?\}", raw)
            if match:
                source = match.group(1)
                out[name] = source
                target = OmegaConf.select(node._get_root(), source, throw_on_resolution_failure=False)
                if isinstance(target, DictConfig):
                    out |= {f"{name}{sub[len(source):]}": sub for sub in _all_keys(target, source)}
            continue
        child = node._get_node(k)
        if isinstance(child, DictConfig):
            out |= interpolation_sources(child, name)
    return out


def _all_keys(node: DictConfig, prefix: str) -> list[str]:
    out = []
    for k in map(str, node):
        name = f"{prefix}.{k}"
        out.append(name)
        child = node._get_node(k)
        if isinstance(child, DictConfig) and not OmegaConf.is_interpolation(node, k):
            out += _all_keys(child, name)
    return out


def check_config(cfg: DictConfig, groups: Sequence[str], settings: type) -> None:
    """Check the top-level `settings` (a dataclass of the run's own keys: seed, evaluation, ...) and the
    plugin nodes at `groups` (dotted keys) against their schemas; raises ConfigError listing every problem."""
    hints = interpolation_sources(cfg)
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    problems = _check_fields({k: v for k, v in plain.items() if k in _dataclass_types(settings)},
                             _dataclass_types(settings), "", hints, "the run")
    for group in groups:
        node = OmegaConf.select(cfg, group)
        if isinstance(node, DictConfig) and "_target_" in node:
            value = OmegaConf.select(OmegaConf.create(plain), group)
            problems += check_plugin(OmegaConf.to_container(value), group, hints)  # type: ignore[arg-type]
    if problems:
        raise ConfigError("config value(s) out of range, nothing was run:\n  " + "\n  ".join(dict.fromkeys(problems)))


T = typing.TypeVar("T")


def structured(cls: type[T], values: Any, key: str) -> T:
    """A settings dataclass (PPO's hparams) built from config values, each checked against its field's type and
    range; unknown or bad ones raise ConfigError naming them as `key.<field>`."""
    if isinstance(values, cls):
        return values
    container = OmegaConf.to_container(values, resolve=True) if isinstance(values, DictConfig) else dict(values)
    plain: dict[str, Any] = {str(k): v for k, v in container.items()}  # type: ignore[union-attr]
    types_ = _dataclass_types(cls)
    problems = _check_fields(plain, types_, key, {}, cls.__name__)
    if problems:
        raise ConfigError("\n  ".join(problems))
    for name, value in plain.items():  # nested settings (text PPO's lora) become their dataclass too
        nested = [a for a in (types_[name], *typing.get_args(types_[name])) if _is_structured(a)]
        if nested and isinstance(value, Mapping):
            plain[name] = structured(nested[0], value, f"{key}.{name}")
    return cls(**plain)
