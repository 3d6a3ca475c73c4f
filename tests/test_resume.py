"""Resume and signals, through main.py as a user runs it: a run killed with kill -9 mid-PPO, or stopped by
SIGTERM mid-reward-training or SIGINT, continues with resume=PATH in the same MLflow run and ends with the
same metrics as an uninterrupted run; a changed config is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT
from tests.test_pipeline import run_main

ARGS = ["experiment=debug", "checkpoint.every=2", "video.enabled=false"]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args, "progress=false"], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until `path` exists (the stage's first checkpoint), failing if the process ends first."""
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} appeared:\n{proc.stdout.read()[-3000:]}"  # type: ignore[union-attr]
        assert time.time() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


def runs(cwd: Path) -> list:
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name("rexlab").experiment_id])


def evaluation(folder: Path) -> dict[str, float]:
    return json.loads((folder / "checkpoints" / "evaluation.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    result = run_main([*ARGS, "tracking=none", "hydra.run.dir=ref"], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return evaluation(cwd / "ref")


def test_kill_9_mid_ppo_then_resume_ends_like_an_uninterrupted_run(in_tmp: Path, uninterrupted: dict) -> None:
    proc = start([*ARGS, "hydra.run.dir=run"], in_tmp)
    wait_for(in_tmp / "run" / "checkpoints" / "resume" / "policy.ckpt", proc)
    proc.kill()  # SIGKILL: nothing can close the MLflow run
    proc.wait()
    [killed] = runs(in_tmp)
    assert killed.info.status == "RUNNING"

    result = run_main([*ARGS, "resume=run"], in_tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "is gone without closing it" in log and "resumed from" in log
    assert "stage 1/4: preferences, finished before" in log
    [run] = runs(in_tmp)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert evaluation(in_tmp / "run") == uninterrupted
    client = MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/true_return")]
    assert len(steps) == len(set(steps)) == 16  # every PPO iteration logged once, across both processes
    assert run.data.metrics["eval/true_return_mean"] == uninterrupted["eval/true_return_mean"]


def test_sigterm_in_reward_training_exits_143_killed_and_resumes(in_tmp: Path, uninterrupted: dict) -> None:
    proc = start([*ARGS, "hydra.run.dir=run"], in_tmp)
    wait_for(in_tmp / "run" / "checkpoints" / "resume" / "reward.ckpt", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-3000:]
    assert "stopped by SIGTERM in stage 'reward'" in out and "resume=" in out
    assert f"Resume with: python main.py {' '.join(ARGS)} progress=false resume={in_tmp / 'run'}" in out
    [run] = runs(in_tmp)
    assert run.info.status == "KILLED"

    result = run_main([*ARGS, "resume=run"], in_tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = runs(in_tmp)
    assert run.info.status == "FINISHED"
    assert evaluation(in_tmp / "run") == uninterrupted


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGUSR2])  # (SIGUSR2: a scheduler's preemption warning)
def test_sigint_and_the_preemption_signal_exit_128_plus_it_killed(in_tmp: Path, sig: signal.Signals) -> None:
    proc = start([*ARGS, "hydra.run.dir=run"], in_tmp)
    wait_for(in_tmp / "run" / "checkpoints" / "resume" / "policy.ckpt", proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, out[-3000:]
    assert f"stopped by {sig.name} in stage 'policy'" in out
    [run] = runs(in_tmp)
    assert run.info.status == "KILLED"


def test_resume_with_a_changed_config_is_refused_naming_the_keys(in_tmp: Path) -> None:
    result = run_main([*ARGS, "reward=true", "evaluation.episodes=2", "hydra.run.dir=run"], in_tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    changed = run_main([*ARGS, "reward=true", "evaluation.episodes=3", "resume=run"], in_tmp)
    assert changed.returncode == 2
    assert "the config differs from the run's" in changed.stdout
    assert "evaluation.episodes: 2 in the run, 3 now" in changed.stdout
    [run] = runs(in_tmp)
    assert run.info.status == "FINISHED"  # the finished run is left as it was


def test_text_ppo_killed_mid_stage_resumes_to_the_same_evaluation(in_tmp: Path, char_lm_dir: str,
                                                                  tiny_encoder_dir: str) -> None:
    """The text PPO's checkpoint holds the LoRA adapters, value head, Adam, the current batch, the KL
    coefficient, the reward normalisation and the random streams: the resumed run ends where an
    uninterrupted one does."""
    args = ["experiment=debug", "env=text", f"env.model={char_lm_dir}", "reward=bradley_terry",
            f"reward.model={tiny_encoder_dir}", "preference=synthetic", "checkpoint.every=3", "tracking=none"]
    reference = run_main([*args, "hydra.run.dir=ref"], in_tmp)
    assert reference.returncode == 0, reference.stderr[-3000:]
    proc = start([*args, "hydra.run.dir=run"], in_tmp)
    wait_for(in_tmp / "run" / "checkpoints" / "resume" / "policy.ckpt", proc)
    proc.kill()
    proc.wait()
    result = run_main([*args, "resume=run"], in_tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout + result.stderr
    assert evaluation(in_tmp / "run") == evaluation(in_tmp / "ref")


def test_online_preferences_resume_with_the_labels_and_refit_reward_of_the_checkpoint(in_tmp: Path) -> None:
    """Mid-PPO with preference=online: the checkpoint holds the labels asked so far, the labeler's random
    stream and the reward refit on them; the resumed run asks the same later rounds."""
    args = ["experiment=debug", "preference=online", "checkpoint.every=3", "video.enabled=false", "tracking=none"]
    reference = run_main([*args, "hydra.run.dir=ref"], in_tmp)
    assert reference.returncode == 0, reference.stderr[-3000:]
    proc = start([*args, "hydra.run.dir=run"], in_tmp)
    wait_for(in_tmp / "run" / "checkpoints" / "resume" / "policy.ckpt", proc)
    time.sleep(1.0)  # past the first query round
    proc.kill()
    proc.wait()
    result = run_main([*args, "resume=run"], in_tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    assert evaluation(in_tmp / "run") == evaluation(in_tmp / "ref")


def test_a_sweep_job_resumes_by_hand_into_its_run_under_its_parent(in_tmp: Path) -> None:
    sweep = run_main(["-m", "experiment=debug", "reward=true", "video.enabled=false",
                      f"hydra.sweep.dir={in_tmp / 'sweep'}"], in_tmp)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    [child] = [r for r in runs(in_tmp) if "mlflow.parentRunId" in r.data.tags]
    again = run_main(["experiment=debug", "reward=true", "video.enabled=false", f"resume={in_tmp / 'sweep' / '0'}"],
                     in_tmp)  # (no REXLAB_PARENT_RUN_ID now: the run keeps its parent all the same)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r.info.run_id for r in runs(in_tmp) if "mlflow.parentRunId" in r.data.tags] == [child.info.run_id]
    assert len(runs(in_tmp)) == 2


def test_dpo_killed_mid_stage_resumes_to_the_same_evaluation(in_tmp: Path, char_lm_dir: str) -> None:
    """DPO's checkpoint holds the LoRA adapters, AdamW and its schedule, and the position in the shuffled batches
    (the reference's log-probabilities are computed again, the same): the resumed run ends where an uninterrupted
    one does."""
    from tests.plugins.text_data import sentiment_records, write_jsonl

    path = write_jsonl(in_tmp / "prefs.jsonl", sentiment_records(120, seed=2, ranking_every=0))
    args = ["experiment=debug", "env=text", f"env.model={char_lm_dir}", "policy=dpo", "preference=file",
            f"preference.path={path}", "checkpoint.every=2", "tracking=none"]
    reference = run_main([*args, "hydra.run.dir=ref"], in_tmp)
    assert reference.returncode == 0, reference.stderr[-3000:]
    proc = start([*args, "hydra.run.dir=run"], in_tmp)
    wait_for(in_tmp / "run" / "checkpoints" / "resume" / "policy.ckpt", proc)
    proc.kill()
    proc.wait()
    result = run_main([*args, "resume=run"], in_tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout + result.stderr
    assert evaluation(in_tmp / "run") == evaluation(in_tmp / "ref")
