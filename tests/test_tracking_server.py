"""A tracking server (`make server`): runs and their artifacts sent to a real `mlflow server` on 127.0.0.1, and
the tracking store's faults: an unreachable server refused in seconds by name, a server that stops mid-run
leaving the run to finish without it (its metrics in metrics.jsonl), a locked sqlite store waited for."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from core.tracking import PROBE_TIMEOUT, MlflowTracker, TrackingUnreachableError
from tests.conftest import ROOT
from tests.test_pipeline import all_artifacts, run_main

HTTP_ENV = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(server: subprocess.Popen) -> None:
    """Kill the server and its workers (the process group it leads)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


@contextmanager
def mlflow_server(folder: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """`mlflow server` as `make server` starts it (sqlite store, artifacts served), on a free port of 127.0.0.1;
    yields its URI once /health answers."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
               "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
    with open(folder / "server.log", "w") as log:
        server = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri, server
    finally:
        stop(server)


def test_a_parallel_sweep_lands_on_the_server_with_its_plots_and_checkpoints(in_tmp: Path) -> None:
    with mlflow_server(in_tmp / "server") as (uri, _):
        began = time.monotonic()
        result = run_main(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "experiment=debug",
                           "reward=trex,true", "video.enabled=false", f"tracking.uri={uri}"], in_tmp)
        took = time.monotonic() - began
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("rexlab").experiment_id])
        [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = {r.data.tags["choice.reward"]: r for r in runs if r is not parent}
        assert len(runs) == 3 and all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id
                                      for r in children.values())
        assert all(r.info.status == "FINISHED" for r in runs)
        assert "jobs.md" in all_artifacts(client, parent.info.run_id)
        both = {"config.yaml", "plots/learning_curve.png", "checkpoints/policy.pt", "checkpoints/policy.yaml"}
        assert both <= all_artifacts(client, children["true"].info.run_id)
        assert both | {"checkpoints/demos.npz", "checkpoints/reward/reward.pt", "plots/reward_extrapolation.png"} <= (
            all_artifacts(client, children["trex"].info.run_id))
        assert "eval/true_return_mean" in children["trex"].data.metrics
    # the files went through the server into its artifact folder, none into a local store
    assert list((in_tmp / "server" / "artifacts").rglob("policy.pt")) and not (in_tmp / "mlruns").exists()
    print(f"\n2-job joblib sweep to a tracking server in {took:.0f} s")


def test_an_unreachable_server_is_refused_in_seconds_naming_it(in_tmp: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for sweep in ([], ["-m", "reward=trex,true"]):
        began = time.monotonic()
        result = run_main([*sweep, "experiment=debug", f"tracking.uri={uri}"], in_tmp)
        took = time.monotonic() - began
        output = result.stdout + result.stderr
        assert result.returncode == 2, output[-3000:]
        assert f"tracking.uri={uri}: no MLflow tracking server answers there" in output, output[-3000:]
        assert "Traceback" not in output and "make server" in output
        assert took < 60, took  # the python start-up and imports; the refusal itself is immediate
        print(f"\nrefused ({'sweep' if sweep else 'run'}) {took:.1f} s after the command started")


def test_a_server_that_answers_nothing_is_refused_after_the_probe_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in HTTP_ENV:
        monkeypatch.delenv(key, raising=False)  # (restored after: the tracker sets them for MLflow)
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        began = time.monotonic()
        with pytest.raises(TrackingUnreachableError, match=f"tracking.uri={uri}: no MLflow tracking server"):
            MlflowTracker(uri, "rexlab")
        took = time.monotonic() - began
    assert PROBE_TIMEOUT - 0.5 < took < PROBE_TIMEOUT + 3, took


def test_a_server_that_stops_mid_run_leaves_the_run_to_finish_with_its_metrics(in_tmp: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with mlflow_server(in_tmp / "server") as (uri, server):
        run = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "experiment=debug", "video.enabled=false",
                                f"tracking.uri={uri}", "hydra.run.dir=out", "progress=false"], cwd=in_tmp, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        client, deadline = MlflowClient(uri), time.monotonic() + 300
        while True:  # stop the server once the run has logged its first metrics
            experiment = client.get_experiment_by_name("rexlab")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs and runs[0].data.metrics:
                break
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before it logged a metric"
            time.sleep(0.3)
        stop(server)
        stopped = time.monotonic()
        output, _ = run.communicate(timeout=600)
    took = time.monotonic() - stopped
    assert run.returncode == 0, output[-4000:]
    assert output.count(f"tracking at {uri} failed") == 1, output[-4000:]
    assert (in_tmp / "out" / "main.log").read_text().count(f"tracking at {uri} failed") == 1
    lines = [json.loads(line) for line in (in_tmp / "out" / "metrics.jsonl").read_text().splitlines()]
    logged = {key for line in lines for key in line["metrics"]}
    assert {"demos/best_true_return", "reward/val_pair_accuracy", "train/true_return",
            "eval/true_return_mean"} <= logged, logged
    assert (in_tmp / "out" / "checkpoints" / "policy.pt").is_file()
    print(f"\nthe run finished {took:.0f} s after its tracking server was killed")


def test_a_locked_sqlite_store_is_waited_for(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "mlflow.db"
    tracker = MlflowTracker(f"sqlite:///{db}", "rexlab")
    run_id = tracker.start("locked", OmegaConf.create({"seed": 0}))
    locked, hold = threading.Event(), 23.0  # longer than MLflow's own wait for a lock (sqlite's busy_timeout, 20 s)

    def writer() -> None:  # another connection holding a write transaction
        other = sqlite3.connect(db, timeout=0, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE experiments SET name = name")
        locked.set()
        time.sleep(hold)
        other.execute("COMMIT")
        other.close()

    thread = threading.Thread(target=writer)
    thread.start()
    locked.wait(10)
    began = time.monotonic()
    with caplog.at_level(logging.INFO, logger="core.tracking"):
        tracker.log_metrics({"reward/val_loss": 0.5}, step=3)
    took = time.monotonic() - began
    thread.join()
    tracker.end()
    assert 20 < took < hold + 6, took  # MLflow gave up once, the tracker tried again
    assert tracker.failed is None and any("is locked by another writer" in r.message for r in caplog.records)
    assert [(m.step, m.value) for m in tracker.client.get_metric_history(run_id, "reward/val_loss")] == [(3, 0.5)]
    assert tracker.client.get_run(run_id).info.status == "FINISHED"
