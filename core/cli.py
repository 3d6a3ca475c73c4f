"""Command-line fixes applied before Hydra parses the overrides, and the resolver Hydra's run folder uses."""

from __future__ import annotations

import re

from omegaconf import OmegaConf

from core.variants import CONF_DIR

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


def run_dir(resume: str | None, fresh: str) -> str:
    """hydra.run.dir: a resumed run's own folder (resume=PATH), else a fresh one. (resume=runs:/<id> is found
    through the tracker later; Hydra's own files then go to the fresh folder.)"""
    return str(resume) if resume and not str(resume).startswith("runs:/") else fresh


if not OmegaConf.has_resolver("rexlab_run_dir"):
    OmegaConf.register_new_resolver("rexlab_run_dir", run_dir)
