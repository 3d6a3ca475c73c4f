"""A constitution: the written principles that stand in for human harm labels in Constitutional AI (Bai et al.
2022, "Constitutional AI: Harmlessness from AI Feedback", arXiv:2212.08073), shared by the AI-feedback judge
(each comparison under a principle drawn at random: its `comparison` question) and supervised CAI (its `critique`
and `revision` requests).

A constitution file is YAML, `principles:` a list of mappings, or JSONL, one principle a line; each principle has
exactly the fields name, critique, revision and comparison (non-empty strings). A file with any bad principle is
refused whole, every problem named as FILE:LINE: field 'NAME': problem, as the preference files are. The default,
plugins/data/constitution.yaml, was written for this project: respectful, honest, not harmful, helpful rather than
evasive, fair, kind, private, calm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import NamedError
from core.jsonl import RecordError, exact_fields, json_object, read_jsonl, text_field

DEFAULT = Path(__file__).parent / "data" / "constitution.yaml"
FIELDS = ("name", "critique", "revision", "comparison")


class ConstitutionError(NamedError, ValueError):
    """A constitution file that cannot be read whole; the message names file, line and field."""


@dataclass(frozen=True)
class Principle:
    """name: a short label (logged with each judgement); critique: asks for what is wrong with a response under the
    principle; revision: asks for a rewrite that fixes it; comparison: the question a judge answers about two
    responses, (A) or (B)."""

    name: str
    critique: str
    revision: str
    comparison: str


def _principle(record: Any) -> Principle:
    record = json_object(record, '{"name": ..., "critique": ..., "revision": ..., "comparison": ...}')
    exact_fields(record, FIELDS)
    return Principle(*(text_field(record, f) for f in FIELDS))


def _read_yaml(path: Path, key: str) -> list[Principle]:
    import yaml

    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConstitutionError(f"{key} {where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(root, yaml.MappingNode):
        raise ConstitutionError(f"{key} {path}:1: expected a mapping with a `principles:` list")
    found = [value for name, value in root.value if name.value == "principles"]
    if not found or not isinstance(found[0], yaml.SequenceNode) or not found[0].value:
        raise ConstitutionError(f"{key} {path}:{root.start_mark.line + 1}: field 'principles': missing, or not a "
                                f"non-empty list")
    principles, errors = [], []
    for node in found[0].value:
        line = node.start_mark.line + 1
        if not isinstance(node, yaml.MappingNode):
            errors.append(f"{path}:{line}: a principle must be a mapping with fields {', '.join(FIELDS)}")
            continue
        record = {}
        lines = {}
        for name, value in node.value:
            record[name.value] = value.value if isinstance(value, yaml.ScalarNode) and value.tag.endswith(":str") \
                else yaml.safe_load(yaml.serialize(value))
            lines[name.value] = name.start_mark.line + 1
        try:
            principles.append(_principle(record))
        except RecordError as err:
            at = lines.get(err.field or "", line)
            errors.append(f"{path}:{at}: " + (f"field '{err.field}': " if err.field else "") + err.problem)
    if errors:
        raise ConstitutionError(f"{key} {path}: {len(errors)} malformed principle(s):\n  " + "\n  ".join(errors))
    return principles


def read_constitution(path: str | Path | None, key: str = "preference.constitution") -> list[Principle]:
    """The principles of a constitution file (YAML or JSONL by its suffix; None: the default). Raises
    ConstitutionError naming file, line and field; two principles of one name are refused too."""
    path = Path(path) if path is not None else DEFAULT
    if not path.is_file():
        raise ConstitutionError(f"{key} {path}: no such file")
    if path.suffix in (".jsonl", ".json"):
        principles = read_jsonl(path, key, lambda value, line: _principle(value), ConstitutionError,
                                needs="at least one principle")
    else:
        principles = _read_yaml(path, key)
    names = [p.name for p in principles]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConstitutionError(f"{key} {path}: principle name(s) {', '.join(repeated)} used twice; names label the "
                                f"judgements made under them")
    return principles


def draw(principles: list[Principle], count: int, rng: np.random.Generator) -> list[Principle]:
    """`count` principles drawn uniformly with replacement (one per comparison or critique, as the paper does)."""
    return [principles[int(k)] for k in rng.integers(len(principles), size=count)]
