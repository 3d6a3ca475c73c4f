"""List rexlab's runs in a tracking store, with what a stopped one needs to go on:

    python -m core.runs                      # the store of tracking.uri's default (MLFLOW_TRACKING_URI wins)
    python -m core.runs --uri sqlite:///mlflow.db --limit 20

Each line: status, name, run id, output folder. A run still marked RUNNING whose process is gone (killed
with kill -9, out of memory, a lost node: nothing could close it) is shown as "RUNNING, process gone"; a
KILLED or abandoned run shows the command that resumes it (`resume=<output folder>`).
"""

from __future__ import annotations

import argparse
import os
import socket
from typing import Any

from mlflow.tracking import MlflowClient


def process_alive(pid: int, host: str) -> bool | None:
    """Whether process `pid` still runs; None where that cannot be told (another host)."""
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(run: Any) -> str:
    """One line about a run (an MLflow Run)."""
    tags, status = run.data.tags, run.info.status
    if status == "RUNNING" and "rexlab.pid" in tags:
        alive = process_alive(int(tags["rexlab.pid"]), tags.get("rexlab.host", ""))
        if alive is False:
            status = "RUNNING, process gone"
        elif alive is None:
            status = f"RUNNING on {tags.get('rexlab.host')}"
    folder = tags.get("rexlab.output_dir", "?")
    line = f"{status:<22} {run.info.run_name:<48} {run.info.run_id}  {folder}"
    if status in ("KILLED", "RUNNING, process gone", "FAILED") and folder != "?":
        line += f"\n{'':<23}resume: python main.py {tags.get('overrides', '')} resume={folder}".replace("  r", " r")
    return line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    parser.add_argument("--experiment", default="rexlab")
    parser.add_argument("--limit", type=int, default=50)
    args = parser.parse_args(argv)
    client = MlflowClient(args.uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        print(f"no experiment {args.experiment!r} at {args.uri}")
        return
    for run in client.search_runs([experiment.experiment_id], max_results=args.limit,
                                  order_by=["attributes.start_time DESC"]):
        print(describe(run))


if __name__ == "__main__":
    main()
