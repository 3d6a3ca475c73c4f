"""Preemption under a real submitit launcher (submitit_local): the scheduler's warning signal (SIGUSR2) checkpoints
the job's stage, submitit requeues the job, and the requeued job continues its run: one MLflow run, FINISHED."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]


def task_pid(sweep: Path) -> int | None:
    """The process submitit_local runs the job in (not its controller)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                command = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if "submitit.core._submit" in command and any(str(sweep) in part for part in command):
                return int(proc.name)
    return None


def test_a_preempted_submitit_job_is_requeued_and_continues_its_run(tmp_path: Path) -> None:
    sweep, uri = tmp_path / "sweep", f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    launcher = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "-m", "hydra/launcher=submitit_local", "experiment=debug",
         "policy.total_timesteps=40960", "checkpoint.every=2", "video.enabled=false", "progress=false",
         f"tracking.uri={uri}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    checkpoint = sweep / "0" / "checkpoints" / "resume" / "policy.ckpt"
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline and launcher.poll() is None:
        time.sleep(0.2)
    pid = task_pid(sweep)
    assert checkpoint.exists() and pid is not None, launcher.communicate()[0][-3000:]
    os.kill(pid, signal.SIGUSR2)  # what SLURM sends before a preemption or the time limit (submitit's --signal)
    out = launcher.communicate(timeout=300)[0]
    assert launcher.returncode == 0, out[-3000:]

    logs = "".join(p.read_text(errors="replace") for p in (sweep / ".submitit").glob("*/*_log.*"))
    assert "stopped by SIGUSR2 in stage 'policy'" in logs and "Requeued job" in logs, logs[-3000:]
    assert "holds this job's run from before (a requeued job): it continues" in logs
    assert "resumed from" in logs  # the stage went on from its checkpoint, not from its start

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("rexlab").experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1 and len(children) == 1, [r.info.run_name for r in runs]
    child = children[0]
    assert child.info.status == "FINISHED" and parent[0].info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/sps")]
    assert sorted(steps) == sorted(set(steps)) and len(steps) == 40960 // 256  # every PPO iteration once
    assert "eval/true_return_mean" in child.data.metrics
