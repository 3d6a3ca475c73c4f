"""preference=file: human (or any) preference labels over text responses from a JSONL file.

One JSON object a line (the formats of DESIGN.md); blank lines are skipped:

- pair:       {"prompt": str, "chosen": str, "rejected": str}, optional "annotator" (str or int),
              "margin" (number, how much better; kept in the items' info, used by reward.loss=margin) and
              "probability" (P(chosen is better), in [0, 1]: read as the side it favours, and 0.5, a tie,
              as the pair both ways; with reward.soft_labels=true the reward model trains to the probability,
              kept in each response's info as P(it is the better) for the pair that names it chosen).
- ranking:    {"prompt": str, "responses": [str, ...], "ranking": [best index, ..., worst index]},
              optional "annotator"; "ranking" must be a permutation of the response indices, and a
              ranking of K responses gives its K choose 2 pairs.
- correction: a ranking line with "correction": true, whose responses[0] is a person's corrected
              response; the ranking must put it first (ranking[0] == 0).
- skipped:    {"skipped": true, ...}: an annotator's "can't tell" on the labeling page; no preference.
- HH-RLHF:    {"chosen": dialogue, "rejected": dialogue} with no prompt (Anthropic's HH-RLHF layout, as TRL
              reads it): the prompt is the dialogues' shared beginning up to its last "\n\nAssistant:"
              (earlier turns kept), the responses what follows it in each.

The labeling page's label files (plugins/labeling/store.py) are in this format, with "query", "time" and
"ids" on every line; those fields are accepted (and checked) on any line.

Every line is checked before anything is returned: a malformed file raises PreferenceFileError
listing each bad line as FILE:LINE: field 'NAME': problem, and nothing is trained on a part of it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import NamedError
from core.interfaces import Capabilities, Environment, PreferenceSource, SavedPolicy
from core.jsonl import RecordError, check_text, read_jsonl, text_field
from core.run import RunContext
from core.types import Preferences, Response

LABEL_FIELDS = {"annotator", "query", "time", "ids",  # what the labeling page adds (plugins/labeling/store.py)
                "principle", "rationale"}  # and AI feedback (plugins/preferences/ai_feedback.py)
PAIR_FIELDS = {"prompt", "chosen", "rejected", "margin", "probability"} | LABEL_FIELDS
RANKING_FIELDS = {"prompt", "responses", "ranking", "correction"} | LABEL_FIELDS
SKIP_FIELDS = {"skipped", "prompt"} | LABEL_FIELDS


class PreferenceFileError(NamedError, ValueError):
    """A preference file that cannot be read whole; the message names file, line and field."""


def _metadata(record: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    if "annotator" in record:
        annotator = record["annotator"]
        if isinstance(annotator, bool) or not isinstance(annotator, str | int):
            raise RecordError("annotator", f"must be a string or an integer, got {type(annotator).__name__}")
        info["annotator"] = annotator
    for name in ("query", "time", "principle"):
        if name in record and not isinstance(record[name], str):
            raise RecordError(name, f"must be a string, got {type(record[name]).__name__}")
    if record.get("rationale") is not None and not isinstance(record["rationale"], str):
        raise RecordError("rationale", f"must be a string or null, got {type(record['rationale']).__name__}")
    info.update({name: record[name] for name in ("principle", "rationale") if record.get(name) is not None})
    if "ids" in record and (not isinstance(record["ids"], list)
                            or any(i is not None and not isinstance(i, str) for i in record["ids"])):
        raise RecordError("ids", f"must be a list of item ids (strings or null), got {json.dumps(record['ids'])[:60]}")
    if "margin" in record:
        margin = record["margin"]
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not math.isfinite(margin):
            raise RecordError("margin", f"must be a finite number, got {json.dumps(margin)[:40]}")
        info["margin"] = float(margin)
    return info


def _ranking(record: dict[str, Any], count: int) -> list[int]:
    if "ranking" not in record:
        raise RecordError("ranking", "missing")
    ranking = record["ranking"]
    if not isinstance(ranking, list) or any(isinstance(r, bool) or not isinstance(r, int) for r in ranking):
        raise RecordError("ranking", f"must be a list of response indices (integers), got {json.dumps(ranking)[:60]}")
    if sorted(ranking) != list(range(count)):
        missing = sorted(set(range(count)) - set(ranking))
        extra = sorted({r for r in ranking if not 0 <= r < count} | {r for r in ranking if ranking.count(r) > 1})
        detail = "; ".join(part for part in (f"missing {missing}" if missing else "",
                                             f"out of range or repeated {extra}" if extra else "") if part)
        raise RecordError("ranking", f"must order each of the {count} responses once (a permutation of "
                                   f"0..{count - 1}, best first), got {ranking}: {detail}")
    return ranking


ASSISTANT = "\n\nAssistant:"


def split_dialogues(chosen: str, rejected: str) -> tuple[str, str, str]:
    """A pair in the HH-RLHF layout (Bai et al. 2022: two dialogues "\n\nHuman: ...\n\nAssistant: ..." that
    differ in the last reply) -> (prompt, chosen reply, rejected reply): the prompt is their shared beginning up to
    its last "\n\nAssistant:", earlier turns included."""
    shared = chosen[: next((k for k, (a, b) in enumerate(zip(chosen, rejected, strict=False)) if a != b),
                           min(len(chosen), len(rejected)))]
    cut = shared.rfind(ASSISTANT)
    if cut < 0:
        raise RecordError("prompt", "missing; a pair without one must be two dialogues in the HH-RLHF layout "
                                    "('\n\nHuman: ...\n\nAssistant: ...') that share their beginning up to the "
                                    "last 'Assistant:'")
    end = cut + len(ASSISTANT)
    for field, reply in (("chosen", chosen[end:]), ("rejected", rejected[end:])):
        if "\n\nHuman:" in reply:
            raise RecordError(field, "the two dialogues differ before their last Assistant turn; an HH-RLHF pair "
                                     "differs only in the last reply")
    return chosen[:end], check_text(chosen[end:], "chosen"), check_text(rejected[end:], "rejected")


def parse_record(record: Any, line: int) -> tuple[list[Response], list[tuple[int, int]]]:
    """One line's object -> its responses and pairs (i, j) (i preferred, indices into the responses).
    Raises RecordError naming the field at fault."""
    if not isinstance(record, dict):
        raise RecordError(None, f"must be a JSON object, got {type(record).__name__}")
    if record.get("skipped") is True:  # the labeling page's "can't tell": no preference
        unknown = sorted(set(record) - SKIP_FIELDS)
        if unknown:
            raise RecordError(unknown[0], f"unknown here; a skipped line has {', '.join(sorted(SKIP_FIELDS))}")
        _metadata(record)
        return [], []
    is_pair = "chosen" in record or "rejected" in record
    is_ranking = "responses" in record or "ranking" in record
    if is_pair and is_ranking:
        raise RecordError(None, "mixes a pair's fields (chosen, rejected) with a ranking's (responses, ranking)")
    if not is_pair and not is_ranking:
        raise RecordError("chosen", "missing: a line is a pair {prompt, chosen, rejected} or a ranking "
                                  "{prompt, responses, ranking}")
    allowed = PAIR_FIELDS if is_pair else RANKING_FIELDS
    unknown = sorted(set(record) - allowed)
    if unknown:
        raise RecordError(unknown[0], f"unknown here; a {'pair' if is_pair else 'ranking'} line has "
                                    f"{', '.join(sorted(allowed))}")
    info = {"line": line} | _metadata(record)
    if is_pair:
        chosen, rejected = text_field(record, "chosen"), text_field(record, "rejected")
        if "prompt" in record:
            prompt = text_field(record, "prompt", allow_empty=True)
        else:  # the HH-RLHF layout: two whole dialogues
            prompt, chosen, rejected = split_dialogues(chosen, rejected)
        responses = [Response(prompt, chosen, info=dict(info)), Response(prompt, rejected, info=dict(info))]
        if "probability" not in record:
            return responses, [(0, 1)]
        p = record["probability"]
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
            raise RecordError("probability", f"must be a number in [0, 1] (P(chosen is better)), got "
                                             f"{json.dumps(p)[:40]}")
        responses[0].info["probability"], responses[1].info["probability"] = float(p), 1.0 - float(p)  # (as chosen)
        return responses, [(0, 1), (1, 0)] if p == 0.5 else [(0, 1)] if p > 0.5 else [(1, 0)]

    prompt = text_field(record, "prompt", allow_empty=True)
    if "responses" not in record:
        raise RecordError("responses", "missing")
    texts = record["responses"]
    if not isinstance(texts, list) or len(texts) < 2:
        raise RecordError("responses", f"must be a list of at least 2 strings, got {json.dumps(texts)[:60]}")
    texts = [check_text(t, f"responses[{k}]") for k, t in enumerate(texts)]
    ranking = _ranking(record, len(texts))
    correction = record.get("correction", False)
    if not isinstance(correction, bool):
        raise RecordError("correction", f"must be true or false, got {json.dumps(correction)[:40]}")
    if correction and ranking[0] != 0:
        raise RecordError("ranking", f"a correction's responses[0] is the corrected response and must be ranked "
                                   f"first, got ranking[0] = {ranking[0]}")
    responses = [Response(prompt, t, info=dict(info)) for t in texts]
    if correction:
        responses[0].info["corrected"] = True
    pairs = [(ranking[a], ranking[b]) for a in range(len(ranking)) for b in range(a + 1, len(ranking))]
    return responses, pairs


def read_preference_file(path: str | Path) -> Preferences[Response]:
    """Every line of a JSONL preference file -> Preferences over its responses (scores None: responses to
    different prompts share no scale). Raises PreferenceFileError listing every malformed line."""
    lines = read_jsonl(path, "preference.path", parse_record, PreferenceFileError, needs="at least 1 preference",
                       hint=" (formats: README.md, 'Preference files')")
    items: list[Response] = []
    pairs: list[tuple[int, int]] = []
    for responses, local in lines:
        pairs.extend((i + len(items), j + len(items)) for i, j in local)
        items.extend(responses)
    return Preferences(items=items, pairs=np.array(pairs, dtype=np.int64).reshape(-1, 2))


class PreferenceFile(PreferenceSource):
    """path: a JSONL file of pairs, rankings or corrections (module docstring)."""

    capabilities = Capabilities(observations=frozenset({"text"}), actions=frozenset({"token"}))

    def __init__(self, path: str) -> None:
        self.path = path

    def gather(self, env: Environment, run: RunContext, policy: SavedPolicy | None = None) -> Preferences[Response]:
        return read_preference_file(self.path)
