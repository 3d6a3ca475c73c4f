"""Queries for people from what a run has to compare, and preferences from their labels.

clip_queries: consecutive fragments (control) as pairs of looping clips drawn by the task's renderer
(Environment.frames), after distinct_pairs drops a pair of one fragment drawn twice. text_queries: responses
to one prompt, 2 (a pair) or K (a ranking) at a time.
preference_pairs: the labels as (i, j) pairs over the items, a correction becoming an item of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.errors import NamedError
from core.interfaces import Environment
from core.types import Response, Trajectory
from core.video import encode_gif
from plugins.labeling.store import Label, Query, content_id

MAX_CLIP_WIDTH = 320  # pixels; larger renders are shown at half size (or less), which keeps the GIFs small


class CannotShowError(NamedError, ValueError):
    """The task cannot draw its fragments for people (Environment.frames gave nothing)."""


def clip(fragment: Trajectory, env: Environment, fps: int) -> bytes:
    """One fragment as a looping GIF of the states it went through."""
    frames = env.frames(fragment.obs)
    if frames is None:
        raise CannotShowError(f"env={env.name} cannot draw a fragment from its observations (Environment.frames), "
                              f"so people cannot compare its clips; preference=human needs a task that can (classic "
                              f"control, MuJoCo where it renders, Atari) or env=text")
    stride = int(np.ceil(frames.shape[2] / MAX_CLIP_WIDTH))
    return encode_gif(frames[:, ::stride, ::stride], fps)


def clip_queries(fragments: Sequence[Trajectory], env: Environment, fps: int, base: int = 0) -> list[Query]:
    """Fragments 2k and 2k+1 as the k-th pair (items base + 2k, base + 2k + 1), truth their true returns."""
    queries = []
    for k in range(len(fragments) // 2):
        pair = fragments[2 * k : 2 * k + 2]
        ids = [content_id(np.ascontiguousarray(f.obs).tobytes(), np.ascontiguousarray(f.actions).tobytes())
               for f in pair]
        queries.append(Query(items=[base + 2 * k, base + 2 * k + 1], item_ids=ids,
                             clips=[clip(f, env, fps) for f in pair], truth=[f.true_return for f in pair]))
    return queries


def distinct_pairs(fragments: Sequence[Trajectory], count: int | None = None) -> list[Trajectory]:
    """The first `count` (all if None) of the consecutive pairs (2k, 2k + 1) whose two fragments differ (a
    fragment drawn twice is no question), as a flat list again."""
    pairs = [(a, b) for a, b in zip(fragments[0::2], fragments[1::2], strict=True)
             if not (np.array_equal(a.obs, b.obs) and np.array_equal(a.actions, b.actions))]
    return [fragment for pair in pairs[:count] for fragment in pair]


def text_queries(responses: Sequence[Response], per_query: int, count: int, rng: np.random.Generator) -> list[Query]:
    """Up to `count` queries of `per_query` different responses to one prompt (items: indices into `responses`),
    in random order; no response appears in two queries, so the labels are independent."""
    by_prompt: dict[str, dict[str, int]] = {}
    for i, r in enumerate(responses):
        by_prompt.setdefault(r.prompt, {}).setdefault(r.text, i)  # exact repeats of a response count once
    queries = []
    for prompt, texts in by_prompt.items():
        indices = list(texts.values())
        rng.shuffle(indices)
        for start in range(0, len(indices) - per_query + 1, per_query):
            chosen = indices[start : start + per_query]
            gold = [responses[i].gold for i in chosen]
            queries.append(Query(items=chosen, item_ids=[content_id(prompt, responses[i].text) for i in chosen],
                                 prompt=prompt, texts=[responses[i].text for i in chosen],
                                 truth=None if any(g is None for g in gold) else [float(g) for g in gold])) # type: ignore[arg-type]
    order = rng.permutation(len(queries))[:count]
    return [queries[k] for k in order]


def preference_pairs(queries: Sequence[Query], labels: dict[str, list[Label]],
                     items: list) -> list[tuple[int, int]]:
    """Every label's pairs (i, j) over `items`. Text: each annotator's label is over copies of the responses
    that name the annotator (info["annotator"]), so two annotators who agree stay two preferences for the reward
    model (which uses a repeat of one annotator's pair once); a typed correction is a new response, preferred to
    each one shown with it."""
    pairs: list[tuple[int, int]] = []
    for query in queries:
        for label in labels.get(query.id, []):
            if query.texts is None or label.order is None:  # fragments: the items themselves; a skip: nothing
                pairs += label.pairs(query)
                continue
            copies = {}
            for i in query.items:
                copies[i] = len(items)
                items.append(Response(items[i].prompt, items[i].text, items[i].gold,
                                      info=items[i].info | {"annotator": label.annotator, "query": query.id}))
            pairs += [(copies[i], copies[j]) for i, j in label.pairs(query)]
            if label.correction is not None and query.prompt is not None:
                items.append(Response(query.prompt, label.correction,
                                      info={"corrected": True, "annotator": label.annotator}))
                pairs += [(len(items) - 1, copies[i]) for i in query.items]
    return pairs
