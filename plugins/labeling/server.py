"""The labeling page: a small HTTP server on 127.0.0.1 that shows people queries and keeps their labels.

`WebLabeler` serves page.html (with page.js and page.css, read once from this package) and a JSON API:

    GET  /?token=T                         the page
    GET  /api/next?token=T&annotator=NAME  the next query NAME has not answered, and the progress
    GET  /clip/<query id>/<k>?token=T      a control query's k-th fragment as a looping GIF
    POST /api/label                        {"token", "annotator", "query", "choice": left|right|equal|skip}
                                           or {"token", "annotator", "query", "ranking": [positions best first],
                                           "correction": optional typed response}

Safety: it binds 127.0.0.1 unless `host` says otherwise; every request needs the run's token (random,
printed in the URL), compared in constant time; request bodies are capped and checked field by field; the
clips and pages are served from memory by exact name, so nothing in a request reaches the file system.

`ask` puts queries on the page and waits until each has `labels_per_query` labels from different
annotators (an annotator answers a query at most once), or raises LabelingTimeout after `timeout` seconds.
Every label is in the label file (store.py) before the page hears it is saved; a restarted or resumed run
with the same file shows only what is still unlabeled.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tqdm import tqdm

from core import signals
from core.errors import NamedError
from core.run import RunContext
from core.schema import NonNegativeInt, Positive, PositiveInt
from plugins.labeling.store import Label, LabelStore, Query, annotator_agreement, truth_agreement

log = logging.getLogger(__name__)

MAX_BODY = 256 * 1024          # bytes of one POST
MAX_CORRECTION = 20_000        # characters of a typed response
ANNOTATOR = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")
LEASE_SECONDS = 60.0           # a query shown to one annotator is offered to others after this
STATIC = {"/": ("page.html", "text/html; charset=utf-8"), "/page.js": ("page.js", "text/javascript; charset=utf-8"),
          "/page.css": ("page.css", "text/css; charset=utf-8")}
CHOICES = {"left": ([0, 1], False), "right": ([1, 0], False), "equal": ([0, 1], True), "skip": (None, False)}


class LabelingTimeout(NamedError, TimeoutError):
    """The labels did not all come in within preference.web.timeout seconds; those given are kept."""


class BadRequest(ValueError):
    """A request the page should never send: answered 400 with the message."""


class Stale(ValueError):
    """A label for a query that no longer waits for one (a page left open): answered 409, not kept."""


class WebLabeler:
    """People labeling in the browser (the labeling page). Fields documented in conf/labeling/web.yaml."""

    def __init__(self, host: str = "127.0.0.1", port: NonNegativeInt = 8765, timeout: Positive | None = None,
                 labels_per_query: PositiveInt = 1, labels: str | None = None, question: str | None = None,
                 poll: Positive = 0.25) -> None:
        self.host, self.port, self.timeout, self.labels_per_query = host, port, timeout, labels_per_query
        self.labels_path, self.question, self.poll = labels, question, poll
        self.token = secrets.token_urlsafe(18)
        self.store: LabelStore | None = None
        self.server: ThreadingHTTPServer | None = None
        self.active: list[str] = []  # the queries waiting for labels now
        self.asked: dict[str, None] = {}  # every query asked so far (the page's progress counts them all)
        self.leases: dict[str, tuple[str, float]] = {}
        self.title = ""
        self.corrections = False
        self.lock = threading.Lock()

    # ------------------------------------------------------------ the run's side
    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        shown = socket.gethostname() if str(host) in ("0.0.0.0", "::") else host  # (all addresses: this machine's name)
        return f"http://{shown!s}:{port}/?token={self.token}"

    def open(self, run: RunContext, title: str, question: str, corrections: bool = False) -> LabelStore:
        """Start serving (once; later calls reuse the server) and read the label file. corrections: text queries
        offer a box for a better response typed by the annotator."""
        if self.server is not None:
            assert self.store is not None
            return self.store
        path = Path(self.labels_path) if self.labels_path else run.output_dir / "checkpoints" / "human" / "labels.jsonl"
        self.store = LabelStore(path)
        self.title, self.question, self.corrections = title, self.question or question, corrections
        handler = type("Handler", (_Handler,), {"labeler": self})
        try:
            self.server = ThreadingHTTPServer((self.host, self.port), handler)
        except OSError as err:
            if self.port == 0:
                raise
            log.warning("preference.web.port=%d is taken (%s); serving on a free port instead", self.port, err)
            self.server = ThreadingHTTPServer((self.host, 0), handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="labeling-page", daemon=True).start()
        print(f"\nlabeling page: {self.url}\n  (labels go to {path}; open the link in a browser)", flush=True)
        log.info("labeling page at %s, labels in %s", self.url, path)
        return self.store

    def ask(self, queries: Sequence[Query], run: RunContext) -> dict[str, list[Label]]:
        """Show `queries` on the page and wait until each has labels_per_query labels; their labels by query id.
        A signal stops the wait (signals.Interrupted); nothing given is lost."""
        assert self.store is not None, "open() first"
        store = self.store
        store.add_queries(queries)
        with self.lock:
            self.active += [q.id for q in queries if q.id not in self.active]
            self.asked |= dict.fromkeys(q.id for q in queries)
        need = self.labels_per_query * len(queries)
        have = self._have(queries)
        if have:
            log.info("%d of the %d labels asked are in %s already", have, need, store.path)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        with tqdm(total=need, initial=have, desc="preference: labels from the labeling page", unit="label",
                  disable=not run.progress, dynamic_ncols=True) as bar:
            while (have := self._have(queries)) < need:
                if have != bar.n:  # (an update redraws the bar: a log file would get a line per poll)
                    bar.update(have - bar.n)
                stop = signals.requested()
                if stop is not None:
                    raise signals.Interrupted(stop)
                if deadline is not None and time.monotonic() > deadline:
                    raise LabelingTimeout(
                        f"preference.web.timeout={self.timeout:g} s passed with {have} of the {need} labels asked in; "
                        f"every label given is kept in {store.path}. Go on labeling at the same page after resuming: "
                        f"python main.py ... resume={run.output_dir}")
                time.sleep(self.poll)
            bar.update(have - bar.n)
        with self.lock:
            asked = {q.id for q in queries}
            self.active = [q for q in self.active if q not in asked]
        return {q.id: store.of(q.id) for q in queries}

    def _have(self, queries: Sequence[Query]) -> int:
        assert self.store is not None
        return sum(min(len(self.store.of(q.id)), self.labels_per_query) for q in queries)

    def metrics(self, queries: Sequence[Query]) -> dict[str, float]:
        """preference/human_labels, skipped and tied labels, annotators, and the agreements where measurable."""
        assert self.store is not None
        labels = {q.id: self.store.of(q.id) for q in queries}
        flat = [label for group in labels.values() for label in group]
        out = {"preference/human_labels": float(len(flat)),
               "preference/skipped": float(sum(label.order is None for label in flat)),
               "preference/ties": float(sum(label.tie for label in flat)),
               "preference/annotators": float(len({label.annotator for label in flat}))}
        agreement, shared = annotator_agreement(queries, labels)
        if shared:
            out["preference/annotator_agreement"] = agreement
        truth, compared = truth_agreement(queries, labels)
        if compared:
            out["preference/label_agreement"] = truth
        return out

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    # ------------------------------------------------------------ the page's side (server threads)
    def next_for(self, annotator: str) -> tuple[Query | None, dict[str, int]]:
        """The first asked query `annotator` has not answered that still needs labels, preferring ones no one
        else is looking at; and the progress counts for the page."""
        assert self.store is not None
        with self.lock:
            active = [self.store.queries[q] for q in self.active]
            asked = list(self.asked)
        labels = {q: self.store.of(q) for q in asked}
        mine = sum(any(label.annotator == annotator for label in group) for group in labels.values())
        open_ = [q for q in active if len(labels[q.id]) < self.labels_per_query
                 and all(label.annotator != annotator for label in labels[q.id])]
        now = time.monotonic()
        with self.lock:
            free = [q for q in open_ if (lease := self.leases.get(q.id)) is None or lease[0] == annotator
                    or now - lease[1] > LEASE_SECONDS]
            chosen = (free or open_)[0] if open_ else None
            if chosen is not None:
                self.leases[chosen.id] = (annotator, now)
        progress = {"labeled": sum(min(len(v), self.labels_per_query) for v in labels.values()),
                    "needed": self.labels_per_query * len(labels), "mine": mine}
        return chosen, progress

    def receive(self, body: dict[str, Any]) -> Label:
        """Check a POSTed label field by field and keep it (BadRequest says what is wrong)."""
        assert self.store is not None
        annotator = body.get("annotator")
        if not isinstance(annotator, str) or not ANNOTATOR.match(annotator.strip() or "\x00"):
            raise BadRequest("annotator: a name of 1 to 64 printable characters is needed")
        wanted = body.get("query")
        query = self.store.queries.get(wanted) if isinstance(wanted, str) else None
        if query is None:
            raise BadRequest(f"query: no such query {str(body.get('query'))[:40]!r}")
        with self.lock:
            asked_now = query.id in self.active
        if not asked_now or len(self.store.of(query.id)) >= self.labels_per_query:
            raise Stale(f"query {query.id} is not asked now (it has its labels); the page shows the next one")
        correction = body.get("correction")
        if correction is not None and (query.texts is None or not self.corrections or not isinstance(correction, str)
                                       or not correction.strip() or len(correction) > MAX_CORRECTION):
            raise BadRequest(f"correction: a non-empty text of at most {MAX_CORRECTION} characters, where the run "
                             f"takes corrections (preference.corrections=true, text queries)")
        if "ranking" in body:
            ranking = body["ranking"]
            if (not isinstance(ranking, list) or any(isinstance(r, bool) or not isinstance(r, int) for r in ranking)
                    or sorted(ranking) != list(range(query.size))):
                raise BadRequest(f"ranking: each of the {query.size} positions once, best first")
            label = Label(query.id, annotator.strip(), list(ranking), correction=correction)
        else:
            choice = body.get("choice")
            if choice not in CHOICES or query.size != 2:
                raise BadRequest(f"choice: one of {', '.join(CHOICES)} (pairs; a ranking query takes 'ranking')")
            order, tie = CHOICES[choice]
            if correction is not None and (order is None or tie):
                raise BadRequest("correction: goes with a choice of left or right")
            label = Label(query.id, annotator.strip(), order, tie=tie, correction=correction)
        try:
            self.store.add(label)
        except ValueError as err:
            raise BadRequest(str(err)) from err
        with self.lock:
            self.leases.pop(query.id, None)
        return label

    def query_json(self, query: Query) -> dict[str, Any]:
        shown: dict[str, Any] = {"id": query.id, "size": query.size}
        if query.texts is not None:
            shown |= {"prompt": query.prompt, "texts": query.texts, "corrections": self.corrections}
        else:
            shown["clips"] = [f"/clip/{query.id}/{k}?token={self.token}" for k in range(query.size)]
        return shown


class _Handler(BaseHTTPRequestHandler):
    labeler: WebLabeler
    server_version = "rexlab-labeling"

    timeout = 30  # seconds a connection may sit idle (a slow or stuck client holds a thread no longer)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        log.debug("%s %s", self.address_string(), re.sub(r"token=[^& ]*", "token=...", format % args))

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self'; frame-ancestors 'none'")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _authorised(self, token: Any) -> bool:
        if isinstance(token, str) and hmac.compare_digest(token.encode(), self.labeler.token.encode()):
            return True
        self._json(HTTPStatus.FORBIDDEN, {"error": "token: missing or wrong; open the link the run printed"})
        return False

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlsplit(self.path)
        params = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path in ("/page.js", "/page.css"):  # no data in them; the page loads them without the token
            name, kind = STATIC[url.path]
            self._send(HTTPStatus.OK, _static(name), kind)
            return
        if not self._authorised(params.get("token")):
            return
        labeler = self.labeler
        if url.path == "/":
            name, kind = STATIC["/"]
            self._send(HTTPStatus.OK, _static(name), kind)
        elif url.path == "/api/next":
            annotator = params.get("annotator", "").strip()
            if not ANNOTATOR.match(annotator or "\x00"):
                self._json(HTTPStatus.BAD_REQUEST, {"error": "annotator: a name of 1 to 64 printable characters"})
                return
            query, progress = labeler.next_for(annotator)
            self._json(HTTPStatus.OK, {"title": labeler.title, "question": labeler.question, "progress": progress,
                                       "query": None if query is None else labeler.query_json(query)})
        elif (match := re.fullmatch(r"/clip/([0-9a-f]{12})/([0-9]{1,2})", url.path)) is not None:
            assert labeler.store is not None
            query = labeler.store.queries.get(match[1])
            k = int(match[2])
            if query is None or query.clips is None or k >= query.size:
                self._json(HTTPStatus.NOT_FOUND, {"error": "no such clip"})
                return
            self._send(HTTPStatus.OK, query.clips[k], "image/gif")
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page {url.path[:60]!r}"})

    def do_POST(self) -> None:  # noqa: N802
        if urlsplit(self.path).path != "/api/label":
            self._json(HTTPStatus.NOT_FOUND, {"error": "no such endpoint"})
            return
        try:
            length = int(self.headers.get("Content-Length", "-1"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length > MAX_BODY else HTTPStatus.LENGTH_REQUIRED,
                       {"error": f"a label is a JSON body of at most {MAX_BODY} bytes with its Content-Length"})
            return
        try:
            body = json.loads(self.rfile.read(length))
        except (ValueError, UnicodeDecodeError, RecursionError):
            self._json(HTTPStatus.BAD_REQUEST, {"error": "the body is not JSON"})
            return
        if not isinstance(body, dict):
            self._json(HTTPStatus.BAD_REQUEST, {"error": "the body must be a JSON object"})
            return
        if not self._authorised(body.get("token")):
            return
        try:
            label = self.labeler.receive(body)
        except BadRequest as err:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            return
        except Stale as err:
            self._json(HTTPStatus.CONFLICT, {"error": str(err), "stale": True})
            return
        except OSError as err:  # the label file could not be written: the label is not kept
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"not saved: the label file: {err}"})
            return
        self._json(HTTPStatus.OK, {"saved": True, "query": label.query})


_PAGES: dict[str, bytes] = {}


def _static(name: str) -> bytes:
    """A file of the page, read from this package once."""
    if name not in _PAGES:
        _PAGES[name] = resources.files("plugins.labeling").joinpath(name).read_bytes()
    return _PAGES[name]
