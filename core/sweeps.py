"""A Hydra multirun as one parent tracking run: `SweepCallback` creates the parent in the launching process before
any job starts and hands its id to the jobs (REXLAB_PARENT_RUN_ID, read as tracking.parent_run_id; core/tracking.py),
records each job as it ends (<sweep_dir>/jobs.jsonl: number, overrides, status, error, output folder) and, after the
last, closes the parent with the jobs' table and the sweep's plots: for text runs, plots/gold_vs_kl.png puts each
job's final gold reward against its KL to the reference (what `python main.py -m env=text policy=ppo,dpo,grpo`
compares), read from each job's own results (checkpoints/evaluation.json), never from the tracker.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from core.errors import NamedError
from core.plots import harmless_vs_helpful, sweep_gold_vs_kl
from core.tracking import PARENT_ENV, Tracker

JOBS_FILE = "jobs.jsonl"


def sweep_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """The jobs of a multirun as recorded in <sweep_dir>/jobs.jsonl (written as each job ends), by number."""
    file = sweep_dir / JOBS_FILE
    jobs = [json.loads(line) for line in file.read_text().splitlines()] if file.exists() else []
    return sorted(jobs, key=lambda j: j["job"])


def sweep_table(sweep_dir: Path) -> str:
    """The jobs of a multirun as a table."""
    jobs = sweep_jobs(sweep_dir)
    failed = sum(j["status"] != "FINISHED" for j in jobs)
    rows = [f"| {j['job']} | {j['status']} | `{j['overrides']}` | {j['error']} |" for j in jobs]
    return "\n".join([f"sweep {sweep_dir}: {len(jobs)} job(s), {failed} failed", "",
                      "| job | status | overrides | error (last line) |", "|---|---|---|---|", *rows]) + "\n"


class SweepCallback(Callback):
    """Hydra callback: one parent run per multirun, created in the launching process before the launcher
    starts any job, its id handed to the jobs through the environment (REXLAB_PARENT_RUN_ID, read as
    tracking.parent_run_id: inherited by joblib's workers, submitit's local and SLURM jobs and a Ray
    cluster the launcher starts; conf/hydra/launcher/ray.yaml passes it to an existing one), and closed after
    them; a table of every job (number, overrides, status, the last line of its error) on the console and as
    the parent's artifact jobs.md, failed jobs included (Hydra's sweeper raises the first failure after all
    jobs ran and skips on_multirun_end: the table and the parent's closing then happen at exit)."""

    def __getstate__(self) -> dict[str, Any]:  # the jobs get a copy of Hydra's callbacks: the parent stays here
        return {k: v for k, v in self.__dict__.items() if k not in ("tracker", "parent_run_id")}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.errors import InstantiationException
        from hydra.utils import instantiate

        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.finished = False
        try:
            self.tracker: Tracker = instantiate(config.tracking)
        except InstantiationException as err:
            cause = err.__cause__
            if isinstance(cause, NamedError):  # e.g. an unreachable tracking server: said before any job starts
                print(f"[{self.sweep_dir}] {cause}", file=sys.stderr, flush=True)
                sys.exit(2)
            raise
        launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default="")).rsplit(".", 1)[-1]
        tags = {"rexlab.launcher": launcher, "rexlab.sweep_dir": str(self.sweep_dir.resolve()),
                "rexlab.pid": str(os.getpid()), "rexlab.host": socket.gethostname()}
        self.parent_run_id = self.tracker.start_sweep(f"sweep {self.sweep_dir.name}", tags)
        self.previous_env = os.environ.get(PARENT_ENV)
        if self.parent_run_id:
            os.environ[PARENT_ENV] = self.parent_run_id
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
                  "status": "FINISHED" if job_return.status == JobStatus.COMPLETED else "FAILED", "error": error,
                  "output_dir": str(Path(config.hydra.runtime.output_dir).resolve())}
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
        if self.previous_env is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = self.previous_env
        table = sweep_table(self.sweep_dir)
        print("\n" + table, flush=True)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        (self.sweep_dir / "jobs.md").write_text(table, encoding="utf-8")
        failed = any(job["status"] != "FINISHED" for job in sweep_jobs(self.sweep_dir))
        try:
            plots = sweep_plots(self.sweep_dir)
        except Exception as err:  # (a job's unreadable results, a plotting error: the parent is closed all the same)
            print(f"could not draw the sweep's plots: {type(err).__name__}: {str(err).strip()[:300]}", file=sys.stderr,
                  flush=True)
            plots = ()
        if self.parent_run_id:
            try:
                self.tracker.end_sweep(self.parent_run_id, "FAILED" if failed else "FINISHED",
                                       self.sweep_dir / "jobs.md", plots)
            except Exception as err:  # (the store is gone: the jobs' table is in the sweep folder still)
                print(f"could not close the sweep's parent run {self.parent_run_id}: {type(err).__name__}: "
                      f"{str(err).strip()[:300]}", file=sys.stderr, flush=True)


def sweep_plots(sweep_dir: Path) -> tuple[Path, ...]:
    """The sweep's own plots, drawn from its finished jobs' results: <sweep_dir>/plots/gold_vs_kl.png where two or
    more jobs are text runs (their final eval/gold_reward_mean against eval/kl_to_ref, one colour per setting, the
    seeds of a setting together), and plots/harmless_vs_helpful.png where two or more were scored on both axes (each
    run's models from base to final). Returns the plots made."""
    points, scored = [], []
    for job in sweep_jobs(sweep_dir):
        results = Path(job.get("output_dir", "")) / "checkpoints" / "evaluation.json"
        if job["status"] != "FINISHED" or not job.get("output_dir") or not results.is_file():
            continue
        metrics = json.loads(results.read_text())
        if "eval/kl_to_ref" in metrics and "eval/gold_reward_mean" in metrics:
            setting = " ".join(o for o in job["overrides"].split() if not o.startswith("seed=")) or "(defaults)"
            points.append((setting, float(metrics["eval/kl_to_ref"]), float(metrics["eval/gold_reward_mean"]),
                           float(metrics.get("eval/ref_gold_reward_mean", float("nan")))))
        if {"eval/harmlessness", "eval/helpfulness"} <= set(metrics):
            scored.append((f"#{job['job']} {job['overrides']}".strip(), metrics))
    made = []
    if len(points) >= 2:
        made.append(sweep_dir / "plots" / "gold_vs_kl.png")
        sweep_gold_vs_kl(made[-1], points, f"sweep {sweep_dir.name}")
    if len(scored) >= 2:
        made.append(sweep_dir / "plots" / "harmless_vs_helpful.png")
        harmless_vs_helpful(made[-1], scored, f"sweep {sweep_dir.name}")
    return tuple(made)
