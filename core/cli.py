"""Command-line fixes applied before Hydra parses the overrides, the resolver Hydra's run folder uses, and the
config a command line composes (for tests and benchmarks, which build plugins without running main.py)."""

from __future__ import annotations

import re

from omegaconf import DictConfig, OmegaConf, open_dict

from core.variants import CONF_DIR, override_keys

BOOL_WORDS = {"true", "false"}


def quote_bool_choices(args: list[str]) -> list[str]:
    """Hydra parses `reward=true` as the boolean True and refuses it as a config group choice.
    Quote true/false where they choose an option of a config group (`reward=true`,
    `reward=trex,true`), so the option files `true.yaml` are selectable as DESIGN.md names them."""
    out = []
    for arg in args:
        match = re.fullmatch(r"([+~]?)([\w/]+)=(.+)", arg)
        if match and (CONF_DIR / match.group(2)).is_dir():
            values = match.group(3).split(",")
            if any(v in BOOL_WORDS for v in values):
                quoted = ",".join(f"'{v}'" if v in BOOL_WORDS else v for v in values)
                arg = f"{match.group(1)}{match.group(2)}={quoted}"
        out.append(arg)
    return out


def add_variant_keys(args: list[str]) -> list[str]:
    """Hydra refuses `a.b=v` where the key exists only once a plugin's variant (core/variants.py) has swapped a
    node in, e.g. `env=text preference=synthetic preference.rollouts.prompts=64` (the text variant puts the
    response sampler at preference.rollouts). Such overrides become `+a.b=v`, which the variant keeps. A sweep
    over options (`env=text,cartpole`) is left as it is."""
    settings = [a for a in args if "=" in a and not a.startswith(("-", "+", "~", "hydra")) and override_keys([a])]
    rest = [a for a in args if a not in settings and "=" in a and not a.startswith("-")]
    if not settings or any("," in a.split("=", 1)[1] for a in rest):
        return args
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from core.pipeline import finalize_config

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            before = compose("config", overrides=rest, return_hydra_config=True)
        except Exception:  # Hydra will say what is wrong with the command line itself
            return args
    choices = {k: str(v) for k, v in before.hydra.runtime.choices.items()}
    with open_dict(before):
        before.pop("hydra")
    after = finalize_config(before, choices, args)
    missing = object()
    return [f"+{a}" if a in settings and OmegaConf.select(before, a.split("=", 1)[0], default=missing) is missing
            and OmegaConf.select(after, a.split("=", 1)[0], default=missing) is not missing else a for a in args]


def run_dir(resume: str | None, fresh: str) -> str:
    """hydra.run.dir: a resumed run's own folder (resume=PATH), else a fresh one. (resume=runs:/<id> is found
    through the tracker later; Hydra's own files then go to the fresh folder.)"""
    return str(resume) if resume and not str(resume).startswith("runs:/") else fresh


if not OmegaConf.has_resolver("rexlab_run_dir"):
    OmegaConf.register_new_resolver("rexlab_run_dir", run_dir)


def compose_run(*overrides: str) -> tuple[DictConfig, dict[str, str]]:
    """The config `python main.py <overrides>` would run (the Hydra node removed, the plugins' env and budget
    variants applied) and its group choices."""
    from hydra import compose, initialize_config_dir

    from core.pipeline import finalize_config  # (the pipeline builds on this module)

    args = tuple(add_variant_keys(quote_bool_choices(list(overrides))))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(args), return_hydra_config=True)
    choices = {k: str(v) for k, v in cfg.hydra.runtime.choices.items()}
    with open_dict(cfg):
        cfg.pop("hydra")
    return finalize_config(cfg, choices, args), choices
