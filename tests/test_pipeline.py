"""The pipeline end to end at the debug budget, MLflow records, multirun parent/children, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from core.pipeline import run_pipeline
from tests.conftest import ROOT, compose_with_choices

METRICS = ["demos/best_true_return", "demos/mean_true_return", "reward/train_loss", "reward/val_loss",
           "reward/val_pair_accuracy", "reward/return_correlation", "train/true_return", "train/learned_return",
           "train/sps", "train/entropy", "eval/true_return_mean", "eval/true_return_std", "eval/beats_best_demo"]
ARTIFACTS = ["config.yaml", "plots/reward_extrapolation.png", "plots/learning_curve.png", "checkpoints/policy.pt",
             "checkpoints/policy.yaml", "checkpoints/reward/reward.pt", "checkpoints/reward/reward.yaml",
             "checkpoints/demos.npz", "videos/policy.gif"]


def all_artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= all_artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def run_main(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args, "progress=false"], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=900)


def test_debug_pipeline_writes_an_mlflow_run_with_metrics_and_artifacts(in_tmp: Path) -> None:
    uri = f"sqlite:///{in_tmp / 'mlflow.db'}"
    cfg, choices = compose_with_choices("experiment=debug", "progress=false", f"tracking.uri={uri}",
                                        "tracking.checkpoints=true")
    metrics = run_pipeline(cfg, choices, in_tmp / "out")
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("rexlab").experiment_id])
    assert run.info.status == "FINISHED"
    assert set(METRICS) <= set(run.data.metrics), set(METRICS) - set(run.data.metrics)
    assert run.data.params["reward._target_"] == "plugins.rewards.trex.TREX"
    assert run.data.params["policy.hparams.gamma"] == "0.98"
    assert set(ARTIFACTS) <= all_artifacts(client, run.info.run_id)
    assert run.data.metrics["eval/true_return_mean"] == pytest.approx(metrics["eval/true_return_mean"])
    assert "true return" in run.data.tags["video"]
    assert metrics["demos/best_true_return"] >= metrics["demos/mean_true_return"]


def test_checkpoints_stay_in_the_output_folder_alone_with_a_local_store(in_tmp: Path) -> None:
    """One copy: a local MLflow store gets the plots, video and config; the models stay in outputs/."""
    uri = f"sqlite:///{in_tmp / 'mlflow.db'}"
    cfg, choices = compose_with_choices("experiment=debug", "progress=false", f"tracking.uri={uri}")
    run_pipeline(cfg, choices, in_tmp / "out")
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("rexlab").experiment_id])
    artifacts = all_artifacts(client, run.info.run_id)
    assert {"config.yaml", "plots/learning_curve.png", "videos/policy.gif"} <= artifacts
    assert not any(a.startswith("checkpoints/") for a in artifacts)
    assert (in_tmp / "out" / "checkpoints" / "policy.pt").is_file() and run.data.tags["rexlab.output_dir"] == str(
        in_tmp / "out")


def test_same_seed_same_demonstrations_and_metrics(in_tmp: Path) -> None:
    results = []
    for k in range(2):
        cfg, choices = compose_with_choices("experiment=debug", "progress=false", "tracking=none")
        metrics = run_pipeline(cfg, choices, in_tmp / f"out{k}")
        with np.load(in_tmp / f"out{k}" / "checkpoints" / "demos.npz") as demos:
            results.append((metrics, demos["obs"].copy(), demos["rewards"].copy()))
    (m0, obs0, r0), (m1, obs1, r1) = results
    np.testing.assert_array_equal(obs0, obs1)
    np.testing.assert_array_equal(r0, r1)
    assert m0 == m1


def test_multirun_is_one_parent_with_a_child_per_job(in_tmp: Path) -> None:
    result = run_main(["-m", "experiment=debug", "reward=trex,true", "seed=0,1"], in_tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("rexlab").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(r.data.params["seed"] for r in children) == ["0", "0", "1", "1"]
    assert sorted(r.data.tags["choice.reward"] for r in children) == ["trex", "trex", "true", "true"]
    assert len({r.info.run_name for r in children}) == 4
    assert all(r.info.status == "FINISHED" for r in runs)


def test_unknown_option_is_named_with_the_available_ones(in_tmp: Path) -> None:
    result = run_main(["reward=nope"], in_tmp)
    assert result.returncode != 0
    assert "reward/nope" in result.stderr and "trex" in result.stderr and "true" in result.stderr


def test_garbage_demonstrations_file_is_named_and_the_run_is_kept(in_tmp: Path) -> None:
    (in_tmp / "garbage.npz").write_text("not an archive")
    result = run_main(["preference=ranked_demos", "preference.path=garbage.npz"], in_tmp)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "garbage.npz" in output and "not a readable .npz" in output
    client = MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("rexlab").experiment_id])
    assert run.info.status == "FAILED"
    assert "config.yaml" in all_artifacts(client, run.info.run_id)


def test_a_failing_sweep_closes_its_parent_run(in_tmp: Path) -> None:
    result = run_main(["-m", "preference=ranked_demos", "preference.path=missing1.npz,missing2.npz"], in_tmp)
    assert result.returncode != 0 and "missing1.npz does not exist" in result.stderr
    client = MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("rexlab").experiment_id])
    assert runs and all(r.info.status == "FAILED" for r in runs)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 3 and len(children) == 2  # Hydra's basic launcher runs every job, then raises
    assert {r.info.run_name[-5:] for r in children} == {"-job0", "-job1"}
    assert all(r.data.tags["choice.preference"] == "ranked_demos" for r in children)


def test_sources_with_fragments_report_the_demonstrations_behind_them(in_tmp: Path) -> None:
    cfg, choices = compose_with_choices("experiment=debug", "progress=false", "tracking=none",
                                        "preference=synthetic")
    metrics = run_pipeline(cfg, choices, in_tmp / "out")
    with np.load(in_tmp / "out" / "checkpoints" / "demos.npz") as demos:
        lengths = demos["lengths"]
    assert len(lengths) == metrics["demos/count"] < cfg.preference.num_queries  # not the 2 x 300 fragments
    assert lengths.max() > cfg.preference.fragment_length
    assert abs(metrics["preference/label_agreement"] - 0.72) < 0.1


def test_online_preferences_are_asked_while_the_policy_trains(in_tmp: Path) -> None:
    cfg, choices = compose_with_choices("experiment=debug", "progress=false", "tracking=none", "preference=online")
    metrics = run_pipeline(cfg, choices, in_tmp / "out")
    assert metrics["preference/pairs"] < metrics["preference/queries"] == cfg.preference.num_queries
    with np.load(in_tmp / "out" / "checkpoints" / "demos.npz") as demos:  # the random policy's rollouts
        assert len(demos["lengths"]) == metrics["demos/count"] and metrics["demos/mean_true_return"] < 40
    assert metrics["eval/true_return_mean"] > 2 * metrics["demos/mean_true_return"]
