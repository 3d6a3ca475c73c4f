"""Preferences over text responses as training data, shared by the learners that train on them (the reward
model of reward=bradley_terry, policy=dpo): the connected groups of the pair graph (one ranking or pair line
each), `tidy` (exact repeats and self-pairs dropped, each counted in a warning) and `split_by_prompt` (held-out
groups share no prompt, and so no response, with training: a split by pair or by ranking would leak, as
preference=synthetic pairs each response with several others and files repeat pairs).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from core.types import Preferences, Response

log = logging.getLogger(__name__)

Group = tuple[np.ndarray, np.ndarray]
"""One connected group of preference pairs: its item indices (K,) and its pairs (P_g, 2) as positions
in those items."""


def preference_groups(prefs: Preferences) -> list[Group]:
    """The connected groups of the pair graph (one ranking or pair line each, unless lines share
    responses): for each, its item indices (K,) and its pairs (P_g, 2) as positions in those items."""
    parent = list(range(len(prefs.items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in prefs.pairs:
        parent[root(int(i))] = root(int(j))
    members: dict[int, list[int]] = {}
    for i in np.unique(prefs.pairs):
        members.setdefault(root(int(i)), []).append(int(i))
    pairs_of: dict[int, list[tuple[int, int]]] = {}
    for i, j in prefs.pairs:
        pairs_of.setdefault(root(int(i)), []).append((int(i), int(j)))
    groups = []
    for key, items in members.items():
        where = {item: k for k, item in enumerate(items)}
        local = np.array([(where[i], where[j]) for i, j in pairs_of[key]], dtype=np.int64)
        groups.append((np.array(items, dtype=np.int64), local))
    return groups


def tidy(prefs: Preferences, who: str) -> Preferences:
    """The preferences without exact repeats of a pair (same prompt, chosen and rejected text, and annotator where
    the items name one: the first is kept) and without pairs of a text with itself, each dropped count said in a
    warning, as is the count of pairs whose reverse is there too (kept: ties, or labelers who disagree, pull the
    two scores together). who: the learner, for the warnings (e.g. "reward=bradley_terry")."""
    seen: set[tuple[str, str, str, str]] = set()
    keep, repeats, same = [], 0, 0
    for k, (i, j) in enumerate(prefs.pairs):
        a, b = prefs.items[int(i)], prefs.items[int(j)]
        key = (a.prompt, a.text, b.text, str(a.info.get("annotator", "")))  # two annotators' agreeing labels: both
        if a.text == b.text:
            same += 1
        elif key in seen:
            repeats += 1
        else:
            seen.add(key)
            keep.append(k)
    both_ways = sum((prompt, b, a, annotator) in seen for prompt, a, b, annotator in seen)
    if repeats:
        log.warning("%s: %d of %d preference pairs repeat an earlier pair exactly (same prompt, chosen, rejected "
                    "and annotator); each is used once", who, repeats, len(prefs.pairs))
    if same:
        log.warning("%s: %d preference pair(s) compare a response with itself (chosen == rejected); dropped",
                    who, same)
    if both_ways:
        log.warning("%s: %d preference pairs also appear the other way round (ties, or labelers who "
                    "disagree); both are kept", who, both_ways)
    if len(keep) == len(prefs.pairs):
        return prefs
    return Preferences(items=prefs.items, pairs=prefs.pairs[keep], scores=prefs.scores,
                       demonstrations=prefs.demonstrations, baselines=prefs.baselines)


def split_by_prompt(groups: list[Group], items: Sequence[Response], fraction: float, rng: np.random.Generator,
                    key: str) -> tuple[list[Group], list[Group]]:
    """(training, held-out) groups: every group of randomly drawn prompts is held out until they hold `fraction` of
    the groups (at least one prompt when fraction > 0, never all of them; a prompt that would overshoot the fraction
    is passed over once one is held out). key: the config key of `fraction`, for errors and warnings."""
    if fraction == 0:
        return groups, []
    by_prompt: dict[str, list[int]] = {}
    for k, (members, _) in enumerate(groups):
        by_prompt.setdefault(items[int(members[0])].prompt, []).append(k)
    if len(by_prompt) < 2:
        raise ValueError(f"{key}={fraction} holds out whole prompts, but the preferences have {len(by_prompt)} "
                         f"prompt; set {key}=0")
    prompts = list(by_prompt)
    wanted, held = max(1, round(len(groups) * fraction)), list[int]()
    for k in rng.permutation(len(prompts))[: len(prompts) - 1]:
        if held and len(held) + len(by_prompt[prompts[k]]) > wanted:
            continue
        held += by_prompt[prompts[k]]
        if len(held) >= wanted:
            break
    held_set = set(held)
    if len(held) > 2 * wanted:
        log.warning("the held-out prompts hold %d of the %d rankings (%s=%g asks %d): one prompt has that many",
                    len(held), len(groups), key, fraction, wanted)
    return [g for k, g in enumerate(groups) if k not in held_set], [groups[k] for k in sorted(held_set)]


def merge_identical(prefs: Preferences) -> Preferences:
    """The preferences over one item per distinct (prompt, text): sources that copy a response into every pair it is
    in (preference=synthetic with env=text, per-annotator copies from the labeling page) give a response's pairs one
    item, so that the pairs among one prompt's responses form one group and a learner scores each response once.
    Pairs are kept as they are (two annotators' agreeing labels stay two pairs); the first copy's gold and info stand
    for the item."""
    index: dict[tuple[str, str], int] = {}
    items: list[Response] = []
    where = np.empty(len(prefs.items), dtype=np.int64)
    for k, item in enumerate(prefs.items):
        key = (item.prompt, item.text)
        if key not in index:
            index[key] = len(items)
            items.append(item)
        where[k] = index[key]
    if len(items) == len(prefs.items):
        return prefs
    return Preferences(items=items, pairs=where[prefs.pairs], baselines=prefs.baselines)
