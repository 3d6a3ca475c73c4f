"""Experiment tracking: MLflow (default) or nothing, behind one small interface.

Every tracker keeps an in-memory history of the metrics it was given, so plots can be drawn whether
or not a backend records them, and appends them to metrics.jsonl in the run's output folder, so a run
whose tracking store went away midway still has them all. A Hydra multirun is one parent MLflow run
with a child run per job, under every launcher: `SweepCallback` (core/sweeps.py) creates the parent in the launching
process before any job starts and puts its id in the environment (REXLAB_PARENT_RUN_ID), which the
jobs inherit (worker processes, SLURM jobs, a Ray cluster through its runtime_env) and read as
`tracking.parent_run_id`.

MlflowTracker's promises under faults: an unreachable tracking server is refused in seconds at the
start, naming its URI; a locked sqlite store is retried; a store that fails during a run is warned
about once, and the run goes on without it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf

from core.errors import NamedError

log = logging.getLogger(__name__)
# conf/hydra/launcher/<name>.yaml take the place of the launcher plugins' configs of the same names, and Hydra
# 1.3 validates each against the plugin's schema of that name (types checked, fields kept) with a deprecation
# warning, in the launching process and again in every job; the validation is wanted, the warning is noise.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/\w+' is validated against ConfigStore schema",
                        category=UserWarning)

PARENT_ENV = "REXLAB_PARENT_RUN_ID"  # the sweep's parent run id, set for its jobs by SweepCallback
KIND = "mlflow.experimentKind"
OUTPUT_DIR_TAG = "rexlab.output_dir"  # the run's output folder (the pipeline's tag): where metrics.jsonl goes
METRICS_FILE = "metrics.jsonl"
PROBE_TIMEOUT = 5.0  # seconds the start-up check of a tracking server waits for /health
LOCKED = "database is locked"


class TrackingUnreachableError(NamedError, ConnectionError):
    """tracking.uri names a tracking server that does not answer."""


class Tracker:
    """Records metrics, params and artifacts of one run. This base class records history only."""

    def __init__(self) -> None:
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.non_finite: dict[str, tuple[int, int]] = {}  # key -> (count, first step) of nan/inf values
        self.output_dir: Path | None = None  # the run's output folder (metrics.jsonl), once known

    def start(self, run_name: str, config: DictConfig, tags: dict[str, str] | None = None) -> str | None:
        """Begin a run (a multirun job's under the sweep's parent, tracking.parent_run_id); `tags` are recorded
        with it (group choices, overrides; rexlab.output_dir names the folder that metrics.jsonl goes to).
        Returns the run's id, if it has one."""
        if tags and tags.get(OUTPUT_DIR_TAG):
            self.output_dir = Path(tags[OUTPUT_DIR_TAG])
        return None

    def resume(self, run_id: str | None) -> str | None:
        """Continue the run `run_id` (a resumed run): logging goes on in it, and a metric value it holds
        already at the same step (logged again by a stage resumed from a checkpoint) is not repeated.
        Returns the status the run had (RUNNING: its process never closed it), if known."""
        return None

    def locate(self, run_id: str) -> Path:
        """The output folder of the run `run_id` (runs:/<id>), for policy.init, reward.init and resume."""
        raise ValueError(f"runs:/{run_id} names a tracked run, but tracking is off (tracking=none); give the run's "
                         f"output folder instead")

    def restore_history(self, history: dict[str, list[tuple[int, float]]]) -> None:
        """Replace the in-memory history (by a resumed stage's, as of its checkpoint)."""
        self.history.clear()
        for key, points in history.items():
            self.history[key] = [(int(s), float(v)) for s, v in points]

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.history[key].append((step, float(value)))
            if not math.isfinite(float(value)):
                count, first = self.non_finite.get(key, (0, step))
                if not count:
                    log.warning("metric %s is %s at step %d (recorded as the run's tag nonfinite.%s)", key, value,
                                step, key)
                self.non_finite[key] = (count + 1, first)
        if self.output_dir is not None and metrics:
            values = {k: float(v) if math.isfinite(float(v)) else str(float(v)) for k, v in metrics.items()}
            line = json.dumps({"step": int(step), "time": round(time.time(), 3), "metrics": values})
            with open(self.output_dir / METRICS_FILE, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Store a file (or every file below a folder) with the run."""

    def log_checkpoint(self, path: Path, artifact_path: str | None = None) -> None:
        """Store a checkpoint (a model, demonstrations) with the run where the tracker keeps them (they always
        stay in the run's output folder)."""

    def set_tag(self, key: str, value: str) -> None:
        """Attach a short note to the run (e.g. why no video was recorded)."""
        if key == OUTPUT_DIR_TAG and value:  # (a resumed run names its folder this way)
            self.output_dir = Path(value)

    def end(self, status: str = "FINISHED") -> None:
        """Close the run with an MLflow status: FINISHED, FAILED or KILLED."""

    def start_sweep(self, name: str, tags: dict[str, str] | None = None) -> str | None:
        """Begin the parent run of a multirun (called once, in the launching process, before its jobs);
        returns its id, which the jobs get as tracking.parent_run_id."""
        return None

    def end_sweep(self, run_id: str, status: str = "FINISHED", table: Path | None = None,
                  plots: tuple[Path, ...] = ()) -> None:
        """Close the parent run `run_id` of a multirun with `status`, attaching the jobs' table and the sweep's
        plots (under plots/)."""

    def last(self, key: str) -> float | None:
        """The most recently logged value of a metric, or None."""
        return self.history[key][-1][1] if self.history.get(key) else None


class NullTracker(Tracker):
    """tracking=none: keeps the in-memory history (for plots and the summary), records nothing."""


def flatten(config: DictConfig) -> dict[str, Any]:
    """Resolved config -> {"a.b.c": value}, the form MLflow params take."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(config, resolve=True), "")
    return out


class _LockedFilter(logging.Filter):
    """Drops MLflow's traceback for a locked sqlite store (one per attempt): the tracker retries those."""

    def filter(self, record: logging.LogRecord) -> bool:
        return LOCKED not in record.getMessage()


def probe_server(uri: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Raise TrackingUnreachableError unless something answers HTTP at <uri>/health within `timeout` seconds
    (any HTTP answer counts: the server's own requests then say what is wrong)."""
    began = time.monotonic()
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingUnreachableError(
            f"tracking.uri={uri}: no MLflow tracking server answers there (GET /health: {reason}, after "
            f"{time.monotonic() - began:.1f} s). Start one (make server), or track locally: "
            f"tracking.uri=sqlite:///mlflow.db (or tracking=none)") from None


@contextmanager
def store_setup_lock(uri: str) -> Iterator[None]:
    """For a sqlite store: hold a lock, shared by the processes of this machine, while MLflow opens the store.
    Its first opening creates the tables, and two runs started together on a new mlflow.db would both try (the
    second failed with "table ... already exists"). The lock is a file in the temp folder named after the
    store's path, so the user's folder gets none."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    store = os.path.abspath(uri[len("sqlite:///"):].split("?", 1)[0])
    name = f"rexlab-mlflow-{hashlib.sha1(store.encode()).hexdigest()[:16]}.lock"
    with open(Path(tempfile.gettempdir()) / name, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class MlflowTracker(Tracker):
    """Logs to MLflow at `uri` (sqlite by default, or an `mlflow server`) under `experiment_name`; fields are
    documented in conf/tracking/mlflow.yaml."""

    def __init__(self, uri: str, experiment_name: str, checkpoints: bool | Literal["auto"] = "auto",
                 parent_run_id: str | None = None, http_timeout: float = 30, http_retries: int = 2,
                 lock_timeout: float = 120) -> None:
        super().__init__()
        self.uri = uri
        self.experiment_name = experiment_name
        remote = uri.split(":", 1)[0] in ("http", "https", "databricks")
        self.upload_checkpoints = checkpoints is True or (checkpoints == "auto" and remote)
        self.parent_run_id = str(parent_run_id) if parent_run_id not in (None, "", "null", "None") else None
        self.lock_timeout = float(lock_timeout)
        self.run_id: str | None = None
        self.failed: str | None = None  # the first tracking error of the run: nothing more is sent after it
        self._client: Any = None
        self._logged: dict[str, set[tuple[int, float]]] = {}  # a resumed run's values: (step, value) per key
        if uri.split(":", 1)[0] in ("http", "https"):
            # MLflow's own defaults (7 retries with exponential backoff, 120 s a request) would spend minutes
            # on a server that is gone; these are read by MLflow at each request.
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(float(http_timeout)))
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(int(http_retries))
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            probe_server(uri, min(PROBE_TIMEOUT, float(http_timeout)))
        elif uri.startswith("sqlite:"):
            store_log = logging.getLogger("mlflow.store.db.utils")
            if not any(isinstance(f, _LockedFilter) for f in store_log.filters):
                store_log.addFilter(_LockedFilter())

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs), retried while a sqlite store is locked by another writer, for up to lock_timeout
        seconds (MLflow's own sessions wait 20 s for a lock, its store's set-up sqlite's 5 s, then fail)."""
        deadline, wait = time.monotonic() + self.lock_timeout, 0.2
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as err:
                if LOCKED not in str(err) or time.monotonic() > deadline:
                    raise
                log.info("%s is locked by another writer; retrying", self.uri)
                time.sleep(wait)
                wait = min(2 * wait, 2.0)

    @property
    def client(self) -> Any:
        if self._client is None:
            # Imported lazily: mlflow is slow to import and tracking=none should not pay for it.
            from mlflow.tracking import MlflowClient

            with store_setup_lock(self.uri):
                self._client = self._call(MlflowClient, tracking_uri=self.uri)
        return self._client

    def _send(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        """A call that records something during a run: after a tracking failure the run goes on without the
        store (one warning; the metrics stay in memory and in metrics.jsonl)."""
        if self.run_id is None or self.failed:
            return
        try:
            self._call(fn, *args, **kwargs)
        except Exception as err:
            if not _is_tracking_error(err):
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            self.failed = f"{type(err).__name__}: {first[:400]}{'...' if len(first) > 400 else ''}"
            where = self.output_dir / METRICS_FILE if self.output_dir else "memory"
            log.warning("tracking at %s failed while %s (%s). The run goes on without it: nothing more is sent "
                        "there, its metrics stay in %s", self.uri, what, self.failed, where)

    def _experiment_id(self) -> str:
        """The experiment's id (created if need be), marked as model development so that MLflow 3's UI opens it
        on the runs table with their metrics, not on its GenAI view."""
        exp = self._call(self.client.get_experiment_by_name, self.experiment_name)
        if exp is None:
            try:
                return str(self._call(self.client.create_experiment, self.experiment_name,
                                      tags={KIND: "custom_model_development"}))
            except Exception:  # another process (a parallel job) created it first
                exp = self._call(self.client.get_experiment_by_name, self.experiment_name)
                if exp is None:
                    raise
        if KIND not in exp.tags:
            self._call(self.client.set_experiment_tag, exp.experiment_id, KIND, "custom_model_development")
        return str(exp.experiment_id)

    def start(self, run_name: str, config: DictConfig, tags: dict[str, str] | None = None) -> str | None:
        super().start(run_name, config, tags)
        tags = {"mlflow.runName": run_name, **(tags or {})}
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        run = self._call(self.client.create_run, self._experiment_id(), run_name=run_name, tags=tags)
        self.run_id, self.failed = run.info.run_id, None
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):
            self._call(self.client.log_batch, self.run_id, params=params[i : i + 100])
        log.info("MLflow run %s (%s) at %s", run_name, self.run_id, self.uri)
        return self.run_id

    def resume(self, run_id: str | None) -> str | None:
        if run_id is None:
            raise ValueError("resume: the saved run has no MLflow run id (it was tracked with tracking=none)")
        run = self._call(self.client.get_run, run_id)
        self._logged = {key: {(m.step, m.value) for m in self._call(self.client.get_metric_history, run_id, key)}
                        for key in run.data.metrics}
        self._call(self.client.update_run, run_id, status="RUNNING")
        self.run_id, self.failed = run_id, None
        log.info("MLflow run %s (%s) continues at %s", run.info.run_name, run_id, self.uri)
        return str(run.info.status)

    def locate(self, run_id: str) -> Path:
        """The run's output folder (its rexlab.output_dir tag) where it exists here; else its checkpoints and
        config downloaded from the tracking server's artifact store into <cache>/runs/<id>/."""
        try:
            run = self._call(self.client.get_run, run_id)
        except Exception as err:
            raise ValueError(f"runs:/{run_id}: no such run at {self.uri} ({type(err).__name__})") from None
        folder = run.data.tags.get(OUTPUT_DIR_TAG)
        if folder and Path(folder).is_dir():
            return Path(folder)
        if not any(a.path == "checkpoints" for a in self.client.list_artifacts(run_id)):
            raise FileNotFoundError(f"runs:/{run_id}: its output folder {folder} is not on this machine and its "
                                    f"checkpoints were not uploaded (tracking.checkpoints=true uploads them)")
        from mlflow.artifacts import download_artifacts

        cache = Path(os.environ.get("REXLAB_CACHE_DIR", Path.home() / ".cache" / "rexlab")) / "runs" / run_id
        cache.mkdir(parents=True, exist_ok=True)
        for name in ("checkpoints", "config.yaml"):
            download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(cache), tracking_uri=self.uri)
        log.info("runs:/%s: its output folder %s is not here; downloaded its artifacts to %s", run_id, folder, cache)
        return cache

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        super().log_metrics(metrics, step)
        if self.run_id is None or self.failed:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if math.isfinite(float(v)) and (step, float(v)) not in self._logged.get(k, ())]
        if batch:
            self._send(f"logging metrics at step {step}", self.client.log_batch, self.run_id, metrics=batch)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.run_id is None or self.failed:
            return
        if not Path(path).exists():  # rexlab's fault, not the store's: not a tracking failure
            raise FileNotFoundError(f"artifact {path} does not exist")
        log_files = self.client.log_artifacts if Path(path).is_dir() else self.client.log_artifact
        self._send(f"uploading {path}", log_files, self.run_id, str(path), artifact_path)

    def log_checkpoint(self, path: Path, artifact_path: str | None = None) -> None:
        if self.upload_checkpoints:
            self.log_artifact(path, artifact_path)

    def set_tag(self, key: str, value: str) -> None:
        super().set_tag(key, value)
        self._send(f"setting the tag {key}", self.client.set_tag, self.run_id, key, value[:5000])

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is None:
            return
        run_id = self.run_id
        if self.failed:  # one try to close it (the store may be back); else it stays RUNNING there
            try:
                where = self.output_dir / METRICS_FILE if self.output_dir else "its output folder"
                self.client.set_tag(run_id, "tracking_error", f"{self.failed} (the rest of the run's metrics are in "
                                                              f"{where})"[:5000])
                self.client.set_terminated(run_id, status)
            except Exception as err:
                log.warning("could not close the run %s at %s (%s); it stays RUNNING there", run_id, self.uri,
                            type(err).__name__)
            self.run_id = None
            return
        for key, (count, first) in self.non_finite.items():  # MLflow keeps no nan/inf: say they happened
            self.set_tag(f"nonfinite.{key}", f"{count} non-finite value(s), the first at step {first}")
        self._send("closing the run", self.client.set_terminated, run_id, status)
        self.run_id = None

    def start_sweep(self, name: str, tags: dict[str, str] | None = None) -> str | None:
        tags = {"mlflow.runName": name, **(tags or {})}
        if self.parent_run_id:  # (a sweep launched by a job of another sweep)
            tags["mlflow.parentRunId"] = self.parent_run_id
        run = self._call(self.client.create_run, self._experiment_id(), run_name=name, tags=tags)
        log.info("MLflow parent run %s (%s)", name, run.info.run_id)
        return str(run.info.run_id)

    def end_sweep(self, run_id: str, status: str = "FINISHED", table: Path | None = None,
                  plots: tuple[Path, ...] = ()) -> None:
        if table is not None and table.exists():
            self._call(self.client.log_artifact, run_id, str(table))
        for plot in plots:
            self._call(self.client.log_artifact, run_id, str(plot), "plots")
        if self._call(self.client.get_run, run_id).info.status == "RUNNING":
            self._call(self.client.set_terminated, run_id, status)


def _is_tracking_error(err: Exception) -> bool:
    """An error of the tracking store or the way to it (MLflow's, HTTP, sqlite, the file system), not a bug."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(err, MlflowException | RequestException | SQLAlchemyError | OSError)
