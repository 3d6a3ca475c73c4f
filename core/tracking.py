"""Experiment tracking: MLflow (default) or nothing, behind one small interface.

Every tracker keeps an in-memory history of the metrics it was given, so plots can be drawn whether
or not a backend records them. A Hydra multirun is one parent MLflow run with a child run per job:
`SweepCallback` creates the parent when the sweep starts and writes its id into the sweep directory,
and each job's tracker attaches its run to it.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

PARENT_RUN_FILE = ".mlflow_parent_run_id"
KIND = "mlflow.experimentKind"


class Tracker:
    """Records metrics, params and artifacts of one run. This base class records history only."""

    def __init__(self) -> None:
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.non_finite: dict[str, tuple[int, int]] = {}  # key -> (count, first step) of nan/inf values

    def start(self, run_name: str, config: DictConfig, sweep_dir: Path | None = None,
              tags: dict[str, str] | None = None) -> str | None:
        """Begin a run; `sweep_dir` is the Hydra sweep directory of a multirun job, else None;
        `tags` are recorded with it (group choices, overrides). Returns the run's id, if it has one."""
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

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Store a file (or every file below a folder) with the run."""

    def log_checkpoint(self, path: Path, artifact_path: str | None = None) -> None:
        """Store a checkpoint (a model, demonstrations) with the run where the tracker keeps them (they always
        stay in the run's output folder)."""

    def set_tag(self, key: str, value: str) -> None:
        """Attach a short note to the run (e.g. why no video was recorded)."""

    def end(self, status: str = "FINISHED") -> None:
        """Close the run with an MLflow status: FINISHED, FAILED or KILLED."""

    def start_sweep(self, name: str, sweep_dir: Path) -> None:
        """Begin the parent run of a multirun (called once, before its jobs)."""

    def end_sweep(self, sweep_dir: Path, status: str = "FINISHED", table: Path | None = None) -> None:
        """Close the parent run of a multirun with `status`, attaching the jobs' table."""

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


class MlflowTracker(Tracker):
    """Logs to MLflow at `uri` (sqlite by default) under `experiment_name`."""

    def __init__(self, uri: str, experiment_name: str, checkpoints: bool | Literal["auto"] = "auto") -> None:
        super().__init__()
        self.uri = uri
        self.experiment_name = experiment_name
        remote = uri.split(":", 1)[0] in ("http", "https", "databricks")
        self.upload_checkpoints = checkpoints is True or (checkpoints == "auto" and remote)
        self.run_id: str | None = None
        self._client: Any = None
        self._logged: dict[str, set[tuple[int, float]]] = {}  # a resumed run's values: (step, value) per key

    @property
    def client(self) -> Any:
        if self._client is None:
            # Imported lazily: mlflow is slow to import and tracking=none should not pay for it.
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _experiment_id(self) -> str:
        """The experiment's id (created if need be), marked as model development so that MLflow 3's UI opens it
        on the runs table with their metrics, not on its GenAI view."""
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is None:
            return str(self.client.create_experiment(self.experiment_name, tags={KIND: "custom_model_development"}))
        if KIND not in exp.tags:
            self.client.set_experiment_tag(exp.experiment_id, KIND, "custom_model_development")
        return str(exp.experiment_id)

    def start(self, run_name: str, config: DictConfig, sweep_dir: Path | None = None,
              tags: dict[str, str] | None = None) -> str | None:
        tags = {"mlflow.runName": run_name, **(tags or {})}
        parent_file = sweep_dir / PARENT_RUN_FILE if sweep_dir else None
        if parent_file and parent_file.exists():
            tags["mlflow.parentRunId"] = parent_file.read_text().strip()
        run = self.client.create_run(self._experiment_id(), run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        log.info("MLflow run %s (%s) at %s", run_name, self.run_id, self.uri)
        return self.run_id

    def resume(self, run_id: str | None) -> str | None:
        if run_id is None:
            raise ValueError("resume: the saved run has no MLflow run id (it was tracked with tracking=none)")
        run = self.client.get_run(run_id)
        self._logged = {key: {(m.step, m.value) for m in self.client.get_metric_history(run_id, key)}
                        for key in run.data.metrics}
        self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        log.info("MLflow run %s (%s) continues at %s", run.info.run_name, run_id, self.uri)
        return str(run.info.status)

    def locate(self, run_id: str) -> Path:
        """The run's output folder (its rexlab.output_dir tag) where it exists here; else its checkpoints and
        config downloaded from the tracking server's artifact store into <cache>/runs/<id>/."""
        try:
            run = self.client.get_run(run_id)
        except Exception as err:
            raise ValueError(f"runs:/{run_id}: no such run at {self.uri} ({type(err).__name__})") from None
        folder = run.data.tags.get("rexlab.output_dir")
        if folder and Path(folder).is_dir():
            return Path(folder)
        if not any(a.path == "checkpoints" for a in self.client.list_artifacts(run_id)):
            raise FileNotFoundError(f"runs:/{run_id}: its output folder {folder} is not on this machine and its "
                                    f"checkpoints were not uploaded (tracking.checkpoints=true uploads them)")
        import os

        from mlflow.artifacts import download_artifacts

        cache = Path(os.environ.get("REXLAB_CACHE_DIR", Path.home() / ".cache" / "rexlab")) / "runs" / run_id
        cache.mkdir(parents=True, exist_ok=True)
        for name in ("checkpoints", "config.yaml"):
            download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(cache), tracking_uri=self.uri)
        log.info("runs:/%s: its output folder %s is not here; downloaded its artifacts to %s", run_id, folder, cache)
        return cache

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        super().log_metrics(metrics, step)
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if math.isfinite(float(v)) and (step, float(v)) not in self._logged.get(k, ())]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.run_id is None:
            return
        if Path(path).is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_checkpoint(self, path: Path, artifact_path: str | None = None) -> None:
        if self.upload_checkpoints:
            self.log_artifact(path, artifact_path)

    def set_tag(self, key: str, value: str) -> None:
        if self.run_id is not None:
            self.client.set_tag(self.run_id, key, value[:5000])

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            for key, (count, first) in self.non_finite.items():  # MLflow keeps no nan/inf: say they happened
                self.client.set_tag(self.run_id, f"nonfinite.{key}", f"{count} non-finite value(s), the first at "
                                                                   f"step {first}")
            run_id, self.run_id = self.run_id, None
            self.client.set_terminated(run_id, status)

    def start_sweep(self, name: str, sweep_dir: Path) -> None:
        run = self.client.create_run(self._experiment_id(), run_name=name)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(run.info.run_id)
        log.info("MLflow parent run %s (%s)", name, run.info.run_id)

    def end_sweep(self, sweep_dir: Path, status: str = "FINISHED", table: Path | None = None) -> None:
        parent_file = sweep_dir / PARENT_RUN_FILE
        if parent_file.exists():
            run_id = parent_file.read_text().strip()
            if table is not None and table.exists():
                self.client.log_artifact(run_id, str(table))
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_terminated(run_id, status)


JOBS_FILE = "jobs.jsonl"


def sweep_table(sweep_dir: Path) -> str:
    """The jobs of a multirun (from <sweep_dir>/jobs.jsonl, written as each job ends) as a table."""
    file = sweep_dir / JOBS_FILE
    jobs = [json.loads(line) for line in file.read_text().splitlines()] if file.exists() else []
    jobs.sort(key=lambda j: j["job"])
    failed = sum(j["status"] != "FINISHED" for j in jobs)
    rows = [f"| {j['job']} | {j['status']} | `{j['overrides']}` | {j['error']} |" for j in jobs]
    return "\n".join([f"sweep {sweep_dir}: {len(jobs)} job(s), {failed} failed", "",
                      "| job | status | overrides | error (last line) |", "|---|---|---|---|", *rows]) + "\n"


class SweepCallback(Callback):
    """Hydra callback: one parent run per multirun, created before the jobs and closed after, and a table of
    every job (number, overrides, status, the last line of its error) on the console and as the parent's
    artifact jobs.md, failed jobs included (Hydra's basic launcher runs every job, then raises the first
    failure and skips on_multirun_end: the table and the parent's closing then happen at exit)."""

    def _tracker(self, config: DictConfig) -> Tracker:
        from hydra.utils import instantiate

        return instantiate(config.tracking)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.tracker, self.finished = self._tracker(config), False
        self.tracker.start_sweep(f"sweep {self.sweep_dir.name}", self.sweep_dir)
        atexit.register(self.finish)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        if config.hydra.mode != RunMode.MULTIRUN:
            return

        error = ""
        if job_return.status == JobStatus.FAILED:
            failure = job_return._return_value
            lines = str(failure).strip().splitlines()
            error = f"{type(failure).__name__}: {lines[-1].strip() if lines else ''}"[:300]
        record = {"job": int(config.hydra.job.num), "overrides": " ".join(config.hydra.overrides.task),
                  "status": "FINISHED" if job_return.status == JobStatus.COMPLETED else "FAILED", "error": error}
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with open(sweep_dir / JOBS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.finish()

    def finish(self) -> None:
        """Print the jobs' table, attach it to the parent run and close the parent (FAILED if any job failed)."""
        if self.finished:
            return
        self.finished = True
        table = sweep_table(self.sweep_dir)
        print("\n" + table, flush=True)
        (self.sweep_dir / "jobs.md").write_text(table, encoding="utf-8")
        failed = "0 failed" not in table.splitlines()[0]
        self.tracker.end_sweep(self.sweep_dir, "FAILED" if failed else "FINISHED", self.sweep_dir / "jobs.md")
