"""Runs started together on a new sqlite store (two `python main.py` in one folder, a parallel sweep's jobs)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path


def open_store(uri: str, barrier: mp.synchronize.Barrier, results: mp.Queue) -> None:
    from core.tracking import MlflowTracker

    tracker = MlflowTracker(uri, "together")
    barrier.wait()  # every process opens the new store at the same moment
    try:
        results.put(tracker._experiment_id())
    except Exception as err:  # the failure is the test's finding, not a crash of the child
        results.put(f"{type(err).__name__}: {str(err).splitlines()[0]}")


def test_processes_opening_a_new_sqlite_store_together_all_get_it(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=open_store, args=(uri, barrier, results)) for _ in range(3)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert len(set(got)) == 1 and got[0].isdigit(), got  # one experiment, and no "table ... already exists"
