"""preference=human: people label in the browser, on the labeling page the run serves (plugins/labeling/).

Batch labeling: the queries are made up front from another source's items, labeled, then the reward learns.

- control: random fragment pairs of `queries`' trajectories (by default a PPO learner's checkpoint rollouts,
  as preference=synthetic cuts them), shown side by side as looping clips drawn by the task's renderer; the
  annotator answers "left", "right", "equally good" or "can't tell" (Christiano et al. 2017: a tie counts as
  a preference of one half each way, a skip is left out). Christiano et al. show clips of 1-2 s; the default
  fragment of 50 steps is 2.5 s of Pendulum and 1 s of CartPole.
- text: responses of the current model (preference=reference_samples) to one prompt, 2 to compare or K to
  rank (`responses_per_query`, as InstructGPT's labelers rank K), optionally with a better response typed in
  (`corrections`), which is ranked first (the correction format).

Every label is appended to the label file at once (preference.web.labels; default
checkpoints/human/labels.jsonl of the run) with the annotator, the time and the items' ids; a restarted
run, or one resumed with resume=, asks only what is still unlabeled. With preference.web.labels_per_query=2
(or more) each query waits for that many annotators, and their agreement is logged as
preference/annotator_agreement; preference/label_agreement compares the labels with the true return or
gold reward, which the page never shows.
"""

from __future__ import annotations

import logging
from typing import Annotated

import numpy as np

from core.interfaces import Capabilities, Environment, PreferenceSource, SavedPolicy
from core.run import RunContext
from core.schema import PositiveInt, Range
from core.types import Preferences, Response, cut_fragments
from plugins.labeling.queries import clip_queries, distinct_pairs, preference_pairs, text_queries
from plugins.labeling.server import WebLabeler

log = logging.getLogger(__name__)


class HumanLabels(PreferenceSource):
    """Fields documented in conf/preference/human.yaml; the page's settings in conf/labeling/web.yaml."""

    capabilities = Capabilities(observations=frozenset({"vector", "image", "text"}))

    def __init__(self, queries: PreferenceSource, web: WebLabeler, num_queries: PositiveInt = 50,
                 fragment_length: PositiveInt = 50, responses_per_query: Annotated[int, Range(ge=2, le=9)] = 2,
                 corrections: bool = False, fps: PositiveInt = 20) -> None:
        self.source, self.web, self.num_queries, self.fragment_length = queries, web, num_queries, fragment_length
        self.per_query, self.corrections, self.fps = responses_per_query, corrections, fps

    def gather(self, env: Environment, run: RunContext, policy: SavedPolicy | None = None) -> Preferences:
        source = self.source.gather(env, run, policy)
        trajs = source.demonstrations or source.items
        rng = np.random.default_rng(run.seed + 6000)
        if all(isinstance(t, Response) for t in trajs):
            items: list = list(trajs)
            queries = text_queries(items, self.per_query, self.num_queries, rng)
            question = ("Which response is better?" if self.per_query == 2 else
                        f"Rank the {self.per_query} responses from best to worst.")
            demonstrations = None
        else:
            # twice the pairs asked, of which the first that are not one fragment drawn twice are asked
            pool = cut_fragments(trajs, 4 * self.num_queries, self.fragment_length, rng)
            items = distinct_pairs(pool, self.num_queries)
            log.info("drawing %d fragment clips for the labeling page", len(items))
            queries = clip_queries(items, env, self.fps)
            question = f"Which clip shows the {env.name} agent doing its task better?"
            demonstrations = trajs
        if not queries:
            raise ValueError(f"preference=human: the {len(items)} items make no query (text: no prompt has "
                             f"preference.responses_per_query={self.per_query} different responses); lower it or "
                             f"sample more responses per prompt")
        if len(queries) < self.num_queries:
            log.warning("preference.num_queries=%d asked, but the items make %d queries; labeling those",
                        self.num_queries, len(queries))
        store = self.web.open(run, f"rexlab · {run.name or env.name}", question, corrections=self.corrections)
        try:
            labels = self.web.ask(queries, run)
        finally:
            self.web.close()
        if store.foreign:
            log.warning("%s holds %d label(s) of queries this run does not ask (another run's?); they are kept in the "
                        "file and not used", store.path, store.foreign)
        pairs = preference_pairs(queries, labels, items)
        run.log(self.web.metrics(queries) | {"preference/queries": float(len(queries))}, 0)
        run.tracker.log_artifact(store.path, "human")
        log.info("%d labels from %d annotator(s) gave %d preference pairs", sum(map(len, labels.values())),
                 len({label.annotator for group in labels.values() for label in group}), len(pairs))
        if not pairs:
            raise ValueError(f"every label of the {len(queries)} queries was 'can't tell': no preference to learn "
                             f"from; the labels are in {store.path}")
        return Preferences(items=items, pairs=np.array(pairs, dtype=np.int64).reshape(-1, 2),
                           demonstrations=demonstrations)

