"""The labeling page's parts without a browser: the label file (kept whole across restarts, torn lines dropped),
the server's checks (token, fields, no file system), the annotators' agreement, the states drawn from
observations, and preference=file reading a label file. The browser tests are tests/test_labeling_browser.py."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from core.run import RunContext
from core.types import Trajectory
from plugins.envs.gym import GymEnv
from plugins.labeling.queries import CannotShowError, clip_queries, preference_pairs, text_queries
from plugins.labeling.server import LabelingTimeout, WebLabeler
from plugins.labeling.store import (
    Label,
    LabelFileError,
    LabelStore,
    Query,
    annotator_agreement,
    content_id,
    truth_agreement,
)
from plugins.preferences.file import read_preference_file


def text_query(prompt: str, *texts: str, truth: list[float] | None = None) -> Query:
    return Query(items=list(range(len(texts))), item_ids=[content_id(prompt, t) for t in texts], prompt=prompt,
                 texts=list(texts), truth=truth)


def test_labels_survive_a_restart_and_a_torn_last_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    pair, ranking = text_query("p", "good", "bad", truth=[1.0, 0.0]), text_query("q", "a", "b", "c")
    store = LabelStore(path)
    store.add_queries([pair, ranking])
    store.add(Label(pair.id, "ada", [0, 1]))
    store.add(Label(pair.id, "bob", [0, 1], tie=True))
    store.add(Label(ranking.id, "ada", [2, 0, 1], correction="a better one"))
    store.add(Label(ranking.id, "bob", None))
    with pytest.raises(ValueError, match="ada has labeled"):
        store.add(Label(pair.id, "ada", [1, 0]))
    with open(path, "a") as f:
        f.write('{"query": "' + pair.id + '", "annot')  # a kill in mid-write
    again = LabelStore(path)
    again.add_queries([text_query("other", "x", "y")])
    assert again.foreign == 4  # not this run's queries (yet)
    again.add_queries([pair, ranking])
    assert again.foreign == 0 and sum(len(again.of(q.id)) for q in (pair, ranking)) == 4
    [a, b] = again.of(pair.id)
    assert (a.annotator, a.order, a.tie, b.annotator, b.tie) == ("ada", [0, 1], False, "bob", True)
    [c, d] = again.of(ranking.id)
    assert (c.order, c.correction, d.order) == ([2, 0, 1], "a better one", None)
    assert path.read_text().endswith("}\n")  # the torn line is gone: the next label starts a line of its own
    again.add(Label(pair.id, "cy", [1, 0]))
    assert len(path.read_text().splitlines()) == 5

    unended = tmp_path / "unended.jsonl"  # a whole last line without its newline (an editor's): the next label
    unended.write_text(path.read_text().rstrip("\n"))  # starts a line of its own
    store3 = LabelStore(unended)
    store3.add_queries([pair, ranking])
    store3.add(Label(pair.id, "dee", [0, 1]))
    assert len(LabelStore(unended).pending) == 6

    broken = tmp_path / "broken.jsonl"
    broken.write_text(path.read_text() + "not json\n" + path.read_text())
    with pytest.raises(LabelFileError, match=r"broken.jsonl:6: not a label line"):
        LabelStore(broken)

    from core.types import Response

    items: list[Any] = [Response("q", t) for t in ("a", "b", "c")]
    pairs = preference_pairs([ranking], {ranking.id: again.of(ranking.id)}, items)
    assert [(items[i].text, items[j].text) for i, j in pairs] == [
        ("c", "a"), ("c", "b"), ("a", "b"), ("a better one", "a"), ("a better one", "b"), ("a better one", "c")]
    assert all(items[i].info["annotator"] == "ada" for pair in pairs for i in pair)  # ada's copies; bob skipped
    assert items[-1].info["corrected"] and len(items) == 3 + 3 + 1


def test_agreement_between_annotators_and_with_the_truth() -> None:
    q1, q2 = text_query("p", "a", "b", truth=[1.0, 0.0]), text_query("q", "c", "d", truth=[0.0, 2.0])
    labels = {q1.id: [Label(q1.id, "ada", [0, 1]), Label(q1.id, "bob", [0, 1]), Label(q1.id, "cy", [0, 1], tie=True)],
              q2.id: [Label(q2.id, "ada", [0, 1]), Label(q2.id, "bob", None)]}
    agreement, pairs = annotator_agreement([q1, q2], labels)
    assert pairs == 3 and agreement == pytest.approx(1 / 3)  # ada-bob agree; each with cy's tie does not
    truth, counted = truth_agreement([q1, q2], labels)
    assert counted == 3 and truth == pytest.approx(2 / 3)  # q1 twice right, q2 once wrong (ties, skips left out)


def test_text_queries_pair_responses_to_one_prompt_without_reuse() -> None:
    from core.types import Response

    responses = [Response(p, f"{p}{k}", gold=float(k)) for p in "ab" for k in range(5)] + [Response("a", "a0")]
    queries = text_queries(responses, 2, 10, np.random.default_rng(0))
    assert len(queries) == 4  # 5 distinct responses a prompt make 2 pairs; the repeat of "a0" counts once
    shown = [t for q in queries for t in q.texts or []]
    assert len(shown) == len(set(shown)) and all(len({responses[i].prompt for i in q.items}) == 1 for q in queries)
    assert len(text_queries(responses, 3, 10, np.random.default_rng(0))) == 2


class Client:
    """Requests to a labeling server as a browser (or an attacker) would send them."""

    def __init__(self, labeler: WebLabeler) -> None:
        self.base, self.token = labeler.url.split("/?")[0], labeler.token

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def post(self, body: Any, raw: bytes | None = None) -> tuple[int, dict]:
        data = raw if raw is not None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + "/api/label", data=data, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())


@pytest.fixture
def served(tmp_path: Path):
    labeler = WebLabeler(port=0, labels=str(tmp_path / "labels.jsonl"), timeout=30, poll=0.05)
    run = RunContext(seed=0, output_dir=tmp_path, tracker=None, progress=False)  # type: ignore[arg-type]
    labeler.open(run, "test", "Which is better?", corrections=True)
    yield labeler, run
    labeler.close()


def test_the_server_takes_only_well_formed_labels_with_the_token(served: tuple[WebLabeler, RunContext]) -> None:
    labeler, run = served
    queries = [text_query("p", "a", "b"), text_query("q", "c", "d", "e"),
               Query(items=[0, 1], item_ids=["f0", "f1"], clips=[b"GIF89a-left", b"GIF89a-right"])]
    done: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: done.update(labels=labeler.ask(queries, run)))
    thread.start()
    client, token = Client(labeler), labeler.token
    for path in ("/", f"/api/next?annotator=ada&token={token}x", f"/clip/{queries[2].id}/0"):
        status, body = client.get(path)
        assert status == 403 and b"token" in body
    assert client.get(f"/?token={token}")[0] == 200 and client.get("/page.js")[0] == 200
    for path in ("/../../etc/passwd", "/clip/../../etc/passwd", f"/clip/{queries[2].id}/7", "/page.html"):
        assert client.get(f"{path}?token={token}")[0] in (400, 403, 404), path
    assert client.get(f"/clip/{queries[2].id}/1?token={token}") == (200, b"GIF89a-right")
    status, shown = client.get(f"/api/next?annotator=ada&token={token}")
    first = json.loads(shown)["query"]
    assert first["id"] == queries[0].id and first["texts"] == ["a", "b"]

    good = {"token": token, "annotator": "ada", "query": queries[0].id, "choice": "left"}
    for bad, field in [(good | {"token": "nope"}, "token"), (good | {"annotator": ""}, "annotator"),
                       (good | {"annotator": "x" * 65}, "annotator"), (good | {"query": "../labels"}, "query"),
                       (good | {"choice": "up"}, "choice"),
                       (good | {"choice": "skip", "correction": "x"}, "correction"),
                       ({**good, "query": queries[1].id, "ranking": [0, 0, 1]}, "ranking"),
                       ({**good, "query": queries[2].id, "choice": "left", "correction": "text"}, "correction")]:
        status, reply = client.post(bad)
        assert status in (400, 403) and reply["error"].startswith(field), (bad, reply)
    assert client.post(None, raw=b"not json")[0] == 400 and client.post([1, 2])[0] == 400
    assert client.post(good) == (200, {"saved": True, "query": queries[0].id})
    assert client.post(good)[0] == 409  # it has its label: a page left open is told so, nothing is kept
    assert client.post({**good, "query": queries[1].id, "ranking": [2, 0, 1], "correction": "mine"})[0] == 200
    assert client.post({**good, "query": queries[2].id, "choice": "equal"})[0] == 200
    thread.join(10)
    labels = done["labels"]
    assert [len(labels[q.id]) for q in queries] == [1, 1, 1] and labels[queries[2].id][0].tie
    lines = [json.loads(line) for line in Path(labeler.store.path).read_text().splitlines()]  # type: ignore[union-attr]
    assert lines[0]["chosen"] == "a" and lines[1]["responses"] == ["mine", "e", "c", "d"] and lines[1]["correction"]
    assert lines[2] == {"ids": ["f0", "f1"], "probability": 0.5, "query": queries[2].id, "annotator": "ada",
                        "time": lines[2]["time"]}
    assert labeler.metrics(queries)["preference/human_labels"] == 3


def test_waiting_for_labels_times_out_with_the_labels_kept(tmp_path: Path) -> None:
    labeler = WebLabeler(port=0, labels=str(tmp_path / "labels.jsonl"), timeout=0.3, poll=0.05)
    run = RunContext(seed=0, output_dir=tmp_path, tracker=None, progress=False)  # type: ignore[arg-type]
    labeler.open(run, "test", "?")
    try:
        with pytest.raises(LabelingTimeout, match=r"0 of the 1 labels .* kept in .*labels.jsonl.*resume="):
            labeler.ask([text_query("p", "a", "b")], run)
    finally:
        labeler.close()


def test_two_annotators_each_answer_a_query_once(served: tuple[WebLabeler, RunContext]) -> None:
    labeler, run = served
    labeler.labels_per_query = 2
    query = text_query("p", "a", "b")
    thread = threading.Thread(target=labeler.ask, args=([query], run))
    thread.start()
    client = Client(labeler)
    post = {"token": labeler.token, "query": query.id, "choice": "right"}
    assert client.post(post | {"annotator": "ada"})[0] == 200
    status, reply = client.post(post | {"annotator": "ada", "choice": "left"})
    assert status == 400 and "ada has labeled" in reply["error"]  # once per annotator
    assert json.loads(client.get(f"/api/next?annotator=ada&token={labeler.token}")[1])["query"] is None
    assert json.loads(client.get(f"/api/next?annotator=bob&token={labeler.token}")[1])["query"]["id"] == query.id
    assert client.post(post | {"annotator": "bob"})[0] == 200
    thread.join(10)
    assert not thread.is_alive()
    assert labeler.metrics([query])["preference/annotator_agreement"] == 1.0


def test_frames_draw_the_state_behind_each_observation() -> None:
    """CartPole's frames from observations are the frames its renderer drew while it ran."""
    env = GymEnv("CartPole-v1", "cartpole")
    render = gym.make("CartPole-v1", render_mode="rgb_array")
    obs, _ = render.reset(seed=3)
    seen, drawn = [], []
    for _ in range(5):
        seen.append(obs)
        drawn.append(render.render())
        obs, *_ = render.step(1)
    assert np.array_equal(env.frames(np.stack(seen)), np.stack(drawn))
    pendulum = GymEnv("Pendulum-v1", "pendulum").frames(np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]))
    assert pendulum is not None and not np.array_equal(pendulum[0], pendulum[1])  # upright and hanging differ
    fragments = [Trajectory(np.array(seen[:3]), np.ones(3), np.ones(3)), Trajectory(np.array(seen[2:]), np.ones(3),
                                                                                  np.zeros(3))]
    [query] = clip_queries(fragments, env, fps=10)
    assert query.truth == [3.0, 0.0] and all(clip.startswith(b"GIF89a") for clip in query.clips or [])


def test_a_task_that_cannot_draw_its_states_is_refused_by_name() -> None:
    class Blind(GymEnv):
        def frames(self, obs: np.ndarray) -> None:
            return None

    env = Blind("CartPole-v1", "blind")
    fragments = [Trajectory(np.full((2, 4), k, np.float32), np.zeros(2), np.zeros(2)) for k in range(2)]
    with pytest.raises(CannotShowError, match="env=blind cannot draw"):
        clip_queries(fragments, env, fps=10)


def test_preference_file_reads_a_label_file(tmp_path: Path) -> None:
    pair, ranking = text_query("p", "good", "bad"), text_query("q", "a", "b", "c")
    store = LabelStore(tmp_path / "labels.jsonl")
    store.add_queries([pair, ranking])
    for label in (Label(pair.id, "ada", [0, 1]), Label(pair.id, "bob", [1, 0], tie=True), Label(pair.id, "cy", None),
                  Label(ranking.id, "ada", [1, 2, 0], correction="best")):
        store.add(label)
    prefs = read_preference_file(store.path)
    texts = [(prefs.items[i].text, prefs.items[j].text) for i, j in prefs.pairs]
    assert texts[:3] == [("good", "bad"), ("bad", "good"), ("good", "bad")]  # ada's, then bob's tie both ways
    assert texts[3:6] == [("best", "b"), ("best", "c"), ("best", "a")] and len(texts) == 9
