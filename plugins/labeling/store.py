"""What people are asked and what they answered: queries, labels, and the JSONL file that keeps every label.

A query shows 2 items (left, right) or K to rank: fragments of trajectories as looping clips (control) or
responses to one prompt (text). A label is one annotator's answer to one query: an order of the shown
items, best first; for a pair "equally good" (a tie) or "can't tell" (skipped) as in Christiano et al.
2017; with text, optionally a corrected response the annotator typed, ranked above every shown one.

The label file (LabelStore) is the preference-file format, one label a line, appended and fsynced before
the page is told the label is in, so a label the page showed as saved survives any kill:

- text pair:    {"prompt", "chosen", "rejected", "ids": [chosen id, rejected id], ...}
- text ranking: {"prompt", "responses", "ranking", "ids": [id of each response], ...};
                a correction is a ranking with "correction": true whose responses[0] is the typed response
                (its id null) and is ranked first
- control pair: {"ids": [chosen fragment id, rejected fragment id], ...}
- a tie adds "probability": 0.5 (P(chosen is better); its pair counts both ways); a skip is
  {"skipped": true, ...} and gives no pair

and every line has "query" (the query's id), "annotator" and "time" (UTC, ISO 8601). Ids are content
hashes (of the prompt and text, or of the fragment's observations), so a label file finds its queries again
in a restarted run, which makes the same queries, and a file from other queries matches none of them.
`preference=file` reads the text lines.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import NamedError

log = logging.getLogger(__name__)


def content_id(*parts: str | bytes) -> str:
    """A short stable id of some content (12 hex digits of its SHA-1)."""
    digest = hashlib.sha1()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:12]


@dataclass
class Query:
    """One question: compare or rank `items` (the caller's indices; what its labels refer to).

    item_ids: each item's content id (what the label file names); prompt, texts: a text query's prompt and
    responses; clips: a control query's fragments as GIF bytes; truth: each item's true return or gold
    reward where known (never shown; for preference/label_agreement); id: the query's own content id.
    """

    items: list[int]
    item_ids: list[str]
    prompt: str | None = None
    texts: list[str] | None = None
    clips: list[bytes] | None = None
    truth: list[float] | None = None
    id: str = ""

    def __post_init__(self) -> None:
        if len(self.items) < 2 or len(self.item_ids) != len(self.items):
            raise ValueError(f"a query compares at least 2 items, each with an id; got {len(self.items)} items and "
                             f"{len(self.item_ids)} ids")
        self.id = self.id or content_id(self.prompt or "", *self.item_ids)

    @property
    def size(self) -> int:
        return len(self.items)


@dataclass
class Label:
    """One annotator's answer to one query. order: the query's positions best first (a pair's [0, 1]: left is
    better), None when skipped ("can't tell"); tie: "equally good" (a pair); correction: a response typed by
    the annotator, better than every shown one (text)."""

    query: str
    annotator: str
    order: list[int] | None
    tie: bool = False
    correction: str | None = None
    time: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def pairs(self, query: Query) -> list[tuple[int, int]]:
        """(i, j) over the query's items, i preferred: every pair of a ranking; a tie both ways; none if skipped.
        (A correction's own pairs are the caller's: it is a new item.)"""
        if self.order is None:
            return []
        ranked = [query.items[p] for p in self.order]
        pairs = list(combinations(ranked, 2))
        return pairs + [(j, i) for i, j in pairs] if self.tie else pairs

    def record(self, query: Query) -> dict[str, Any]:
        """The label as a line of the label file (module docstring)."""
        meta = {"query": query.id, "annotator": self.annotator, "time": self.time}
        if self.order is None:
            return {"skipped": True} | meta
        ids = [query.item_ids[p] for p in self.order]
        if query.texts is None:  # control: fragment ids only
            return {"ids": ids} | ({"probability": 0.5} if self.tie else {}) | meta
        texts = [query.texts[p] for p in self.order]
        if self.correction is not None:
            return {"prompt": query.prompt, "responses": [self.correction, *texts],
                    "ranking": list(range(len(texts) + 1)), "correction": True, "ids": [None, *ids]} | meta
        if query.size == 2:
            return ({"prompt": query.prompt, "chosen": texts[0], "rejected": texts[1], "ids": ids}
                    | ({"probability": 0.5} if self.tie else {}) | meta)
        return {"prompt": query.prompt, "responses": texts, "ranking": list(range(len(texts))), "ids": ids} | meta

    @classmethod
    def from_record(cls, record: dict[str, Any], query: Query) -> Label:
        """A line of the label file back into a label of `query` (ValueError if it does not fit it)."""
        annotator, when = str(record["annotator"]), str(record.get("time", ""))
        if record.get("skipped"):
            return cls(query.id, annotator, None, time=when)
        ids, correction = list(record["ids"]), None
        if "ranking" in record:
            ids = [ids[k] for k in record["ranking"]]
            if record.get("correction"):
                correction, ids = record["responses"][0], ids[1:]
        if sorted(ids) != sorted(query.item_ids):
            raise ValueError(f"its ids {ids} are not query {query.id}'s items {query.item_ids}")
        order = [query.item_ids.index(i) for i in ids]
        return cls(query.id, annotator, order, tie=record.get("probability") == 0.5, correction=correction, time=when)


class LabelFileError(NamedError, ValueError):
    """A label file with a line that is no label (not the torn last line of a kill)."""


class LabelStore:
    """The label file and the labels in it, safe to use from the server's threads and the run's at once.

    path: the JSONL file (made with its folder if missing; labels already in it are read, so a restarted run
    asks only what is still unlabeled). Lines of queries this run does not have are kept in the file and
    counted (`foreign`); a torn last line (a kill in mid-write, never acknowledged to the page) is dropped
    with a warning.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock = threading.Lock()
        self.labels: dict[str, list[Label]] = {}
        self.pending: dict[str, dict[str, Any]] = {}  # records of queries not (yet) known: matched by `add_queries`
        self.queries: dict[str, Query] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        torn = False
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = (str(record["query"]), str(record["annotator"]))
            except (ValueError, KeyError, TypeError) as err:
                if number == len(lines):  # the last line, without its newline: a write cut short
                    log.warning("%s:%d: a label cut short in mid-write (%s) is dropped; it was never confirmed",
                                self.path, number, err)
                    with open(self.path, "r+b") as f:  # so that the next label starts a line of its own
                        f.truncate(len(raw) - len(line))
                    torn = True
                    continue
                raise LabelFileError(f"preference.web.labels {self.path}:{number}: not a label line ({err}); the "
                                     f"file is not changed: fix or remove that line, or name another file") from err
            self.pending[f"{key[0]}\0{key[1]}"] = record
        if lines[-1].strip() and not torn:  # a whole last line without its end
            with open(self.path, "ab") as f:
                f.write(b"\n")

    def add_queries(self, queries: Sequence[Query]) -> None:
        """Make `queries` known; labels of them already in the file count from now on."""
        with self.lock:
            for query in queries:
                self.queries[query.id] = query
                self.labels.setdefault(query.id, [])
            for key in [k for k, r in self.pending.items() if str(r["query"]) in self.queries]:
                record = self.pending.pop(key)
                query = self.queries[str(record["query"])]
                try:
                    self.labels[query.id].append(Label.from_record(record, query))
                except (ValueError, KeyError, IndexError, TypeError) as err:
                    log.warning("%s: a label of query %s does not fit it (%s); ignored", self.path, query.id, err)

    @property
    def foreign(self) -> int:
        """Lines of the file that name no query of this run (so far)."""
        return len(self.pending)

    def add(self, label: Label) -> None:
        """Append `label` to the file (fsynced) and count it. ValueError if its annotator labeled the query."""
        with self.lock:
            query = self.queries[label.query]
            if any(old.annotator == label.annotator for old in self.labels[query.id]):
                raise ValueError(f"{label.annotator} has labeled query {query.id} already")
            line = (json.dumps(label.record(query), ensure_ascii=False) + "\n").encode()
            with open(self.path, "ab") as f:
                size = f.tell()
                try:
                    f.write(line)
                    f.flush()
                    os.fsync(f.fileno())
                except OSError:  # (a full disk): the file as it was, and the page is told the label is not saved
                    f.truncate(size)
                    raise
            self.labels[query.id].append(label)

    def of(self, query_id: str) -> list[Label]:
        with self.lock:
            return list(self.labels.get(query_id, []))


def annotator_agreement(queries: Sequence[Query], labels: dict[str, list[Label]]) -> tuple[float, int]:
    """Agreement between annotators on the queries two or more of them answered (skips left out): for each
    two annotators of a query, the share of its item pairs they order alike (a tie agrees only with a tie).
    Returns (the mean over those annotator pairs, how many there were); nan with none."""
    scores = []
    for query in queries:
        answered = [label for label in labels.get(query.id, []) if label.order is not None]
        for a, b in combinations(answered, 2):
            pairs_a, pairs_b = set(a.pairs(query)), set(b.pairs(query))
            items = list(combinations(sorted(query.items), 2))
            scores.append(np.mean([((i, j) in pairs_a, (j, i) in pairs_a) == ((i, j) in pairs_b, (j, i) in pairs_b)
                                   for i, j in items]))
    return (float(np.mean(scores)) if scores else float("nan")), len(scores)


def truth_agreement(queries: Sequence[Query], labels: dict[str, list[Label]]) -> tuple[float, int]:
    """The share of labeled item pairs (ties and skips left out) whose order agrees with the items' truth
    (true return or gold) where it is known and differs; (nan, 0) when there are none."""
    hits = []
    for query in queries:
        if query.truth is None:
            continue
        truth = dict(zip(query.items, query.truth, strict=True))
        for label in labels.get(query.id, []):
            if label.order is None or label.tie:
                continue
            hits += [truth[i] > truth[j] for i, j in label.pairs(query) if truth[i] != truth[j]]
    return (float(np.mean(hits)) if hits else float("nan")), len(hits)
