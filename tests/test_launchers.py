"""Sweeps under Hydra's launchers (conf/hydra/launcher/, the `cluster` extra): each multirun is one parent MLflow
run with a child run per job whatever runs the jobs (worker processes, submitit, a Ray cluster), the parent's id
handed to them through the environment, not a file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from mlflow.tracking import MlflowClient

from core.compat import CONF_DIR
from tests.test_pipeline import run_main

LAUNCHERS = {"joblib": "JoblibLauncher", "submitit_local": "LocalLauncher", "submitit_slurm": "SlurmLauncher",
             "ray": "RayLauncher"}


def sweep_runs(folder: Path) -> tuple[Any, list[Any]]:
    """The parent run and its children in <folder>/mlflow.db (there must be exactly one parent)."""
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("rexlab").experiment_id])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1, "a run is attached to no parent or another one"
    return parent, children


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local", "ray"])
def test_a_sweep_is_one_parent_and_its_children_run_in_parallel_under_each_launcher(in_tmp: Path,
                                                                                     launcher: str) -> None:
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    began = time.monotonic()
    result = run_main(["-m", f"hydra/launcher={launcher}", *extra, "experiment=debug", "reward=trex,true",
                       "video.enabled=false"], in_tmp)
    took = time.monotonic() - began
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 job(s), 0 failed" in result.stdout
    parent, children = sweep_runs(in_tmp)
    assert parent.info.status == "FINISHED" and parent.data.tags["rexlab.launcher"] == LAUNCHERS[launcher]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    assert sorted(r.data.tags["choice.reward"] for r in children) == ["trex", "true"]
    assert {r.info.run_name[-5:] for r in children} == {"-job0", "-job1"}
    # each job ran in a process of its own, not the launching one, and the two at the same time
    pids = {r.data.tags["rexlab.pid"] for r in children}
    assert len(pids) == 2 and parent.data.tags["rexlab.pid"] not in pids
    a, b = children
    assert a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time, "the jobs did not overlap"
    [sweep] = list((in_tmp / "multirun").glob("*/*"))
    assert not list(sweep.glob(".mlflow*")), "the parent's id went through a file"
    assert all((sweep / str(job) / "metrics.jsonl").is_file() for job in (0, 1))
    print(f"\n{launcher}: 2-job sweep in {took:.0f} s")


@pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/\w+' is validated")  # wanted: core.tracking silences it
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_our_launcher_files_take_the_plugins_place_with_their_types_checked(launcher: str) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
        node = cfg.hydra.launcher
        assert node._target_.endswith(LAUNCHERS[launcher])
        if launcher == "joblib":
            assert node.n_jobs == 2  # ours (the plugin's is -1)
            with pytest.raises(ConfigCompositionException, match="n_jobs"):
                compose("config", overrides=["hydra/launcher=joblib", "hydra.launcher.n_jobs=many"],
                        return_hydra_config=True)
        elif launcher == "submitit_slurm":
            assert node.cpus_per_task == 2 and node.max_num_timeout == 0
        elif launcher == "ray":
            assert node.ray.remote.max_calls == 1 and "REXLAB_PARENT_RUN_ID" in node.ray.init.runtime_env.env_vars


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_every_launcher_field_has_a_comment(launcher: str) -> None:
    lines = (CONF_DIR / "hydra" / "launcher" / f"{launcher}.yaml").read_text().splitlines()
    fields = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    parents = {"ray:", "init:", "remote:", "runtime_env:", "env_vars:"}  # nodes whose fields carry the comments
    uncommented = [line for line in fields if " # " not in line and line.strip() not in parents]
    assert not uncommented, uncommented
