"""Faults: non-finite numbers stop a stage by name and keep the last good checkpoint; poisoned input files
and too-long lines are refused by file and line; a refused config prints its message alone; a failed run
carries its error; a sweep shows every job in a table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from core.demo_files import DemoFileError, load_demos, save_demos
from core.errors import NonFiniteError
from core.interfaces import EnvReward
from core.pipeline import run_pipeline
from core.run import Checkpointing, RunContext
from core.tracking import MlflowTracker, NullTracker
from core.types import Trajectory
from plugins.envs.gym import GymEnv
from plugins.optimizers.ppo import PPO
from plugins.preferences.file import PreferenceFileError, read_preference_file
from plugins.rewards.trex import TREX, TREXModule
from tests.conftest import compose_with_choices
from tests.plugins.test_trex import ranked_set
from tests.test_pipeline import all_artifacts, run_main


def test_a_nan_loss_stops_the_stage_by_name_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    training_step = TREXModule.training_step

    def poisoned(self: TREXModule, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = training_step(self, batch, batch_idx)
        return loss * float("nan") if self.trainer.global_step == 5 else loss  # step 6 goes bad

    monkeypatch.setattr(TREXModule, "training_step", poisoned)
    file = tmp_path / "reward.ckpt"
    run = RunContext(0, tmp_path, NullTracker(), progress=False, checkpoint=Checkpointing(file, every=2),
                     stage="reward", suspects=("reward.lr=0.5",))
    reward = TREX(num_pairs=80, ensemble_size=1, hidden_sizes=(8,), batch_size=8, min_snippet_length=10,
                  max_snippet_length=20)
    with pytest.raises(NonFiniteError, match=r"stage 'reward': the (training loss|gradient norm) \(nan\) at training "
                                             r"step 6.*not saved.*at fault: reward.lr=0.5"):
        reward.fit(ranked_set(), GymEnv("Pendulum-v1", "pendulum"), run)
    assert torch.load(file, weights_only=False)["global_step"] == 4  # the last good one, not step 6's


def test_ppo_stops_on_a_non_finite_learned_reward(tmp_path: Path) -> None:
    class Broken(EnvReward):
        uses_env_reward = False

        def reward(self, obs: np.ndarray) -> np.ndarray:
            return np.full(len(obs), np.nan, dtype=np.float32)

    run = RunContext(0, tmp_path, NullTracker(), progress=False, stage="policy", suspects=("reward.init=x",))
    with pytest.raises(NonFiniteError, match="stage 'policy': the learned reward of the rollout's states at training "
                                             "step 256.*reward.init=x"):
        PPO({"num_envs": 1, "num_steps": 256, "num_minibatches": 1}, 512).fit(GymEnv("CartPole-v1", "cartpole"),
                                                                              Broken(), run)


def test_a_failed_run_is_failed_with_its_error_tag_and_its_model_unsaved(in_tmp: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    training_step = TREXModule.training_step
    monkeypatch.setattr(TREXModule, "training_step",
                        lambda self, batch, i: training_step(self, batch, i) * float("inf"))
    uri = f"sqlite:///{in_tmp / 'mlflow.db'}"
    cfg, choices = compose_with_choices("experiment=debug", "progress=false", f"tracking.uri={uri}")
    with pytest.raises(NonFiniteError):
        run_pipeline(cfg, choices, in_tmp / "out")
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("rexlab").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("NonFiniteError in stage 'reward': stage 'reward': the gradient norm")
    assert not (in_tmp / "out" / "checkpoints" / "reward").exists()


def test_non_finite_metric_values_are_counted_in_a_tag(in_tmp: Path) -> None:
    tracker = MlflowTracker(f"sqlite:///{in_tmp / 'mlflow.db'}", "rexlab")
    from omegaconf import OmegaConf

    run_id = tracker.start("run", OmegaConf.create({"seed": 0}))
    for step, value in enumerate([1.0, float("nan"), 2.0, float("inf")]):
        tracker.log_metrics({"reward/val_loss": value}, step)
    tracker.end()
    run = tracker.client.get_run(run_id)
    assert run.data.tags["nonfinite.reward/val_loss"] == "2 non-finite value(s), the first at step 1"
    assert [m.value for m in tracker.client.get_metric_history(run_id, "reward/val_loss")] == [1.0, 2.0]
    experiment = tracker.client.get_experiment_by_name("rexlab")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens its runs table


def test_demonstrations_with_a_non_finite_value_are_refused_naming_the_array(tmp_path: Path) -> None:
    trajs = [Trajectory(np.zeros((3, 2), np.float32), np.zeros(3), np.ones(3, np.float32)) for _ in range(2)]
    trajs[1].obs[1, 1] = np.nan
    save_demos(tmp_path / "d.npz", trajs)
    with pytest.raises(DemoFileError, match=r"d.npz: array 'obs' holds a non-finite value \(nan\) at index \(4, 1\)"):
        load_demos(tmp_path / "d.npz")
    trajs[1].obs[1, 1] = 0.0
    save_demos(tmp_path / "r.npz", trajs, np.array([1.0, np.nan]))
    with pytest.raises(DemoFileError, match=r"array 'returns' holds a non-finite value \(nan\) at index 1"):
        load_demos(tmp_path / "r.npz")


def test_a_line_over_max_line_bytes_is_refused_by_file_and_line(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import core.jsonl

    monkeypatch.setattr(core.jsonl, "MAX_LINE_BYTES", 1000)
    path = tmp_path / "prefs.jsonl"
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
    path.write_text("\n".join([good, json.dumps({"prompt": "p", "chosen": "a" * 5000, "rejected": "b"}), good]))
    with pytest.raises(PreferenceFileError, match=r"prefs.jsonl:2: longer than data.max_line_bytes=1000 bytes"):
        read_preference_file(path)


def test_a_refused_config_prints_its_message_alone_and_into_main_log(in_tmp: Path) -> None:
    result = run_main(["experiment=debug", "reward.lr=1e6", "hydra.run.dir=out"], in_tmp)
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "reward.lr: 1000000.0: must be a number in (0, 1]" in output and "Traceback" not in output
    assert "reward.lr: 1000000.0" in (in_tmp / "out" / "main.log").read_text()
    assert not (in_tmp / "mlflow.db").exists() or not MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}").search_runs(
        [MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}").get_experiment_by_name("rexlab").experiment_id])


def test_a_sweep_tables_every_job_and_each_failure_is_in_its_own_log(in_tmp: Path) -> None:
    result = run_main(["-m", "experiment=debug", "reward=true", "evaluation.episodes=0,3", "video.enabled=false"],
                      in_tmp)
    assert result.returncode != 0
    assert "2 job(s), 1 failed" in result.stdout
    assert "| 0 | FAILED | `experiment=debug reward='true' evaluation.episodes=0" in result.stdout
    assert "evaluation.episodes: 0: must be an integer >= 1" in result.stdout and "| 1 | FINISHED |" in result.stdout
    [sweep] = list((in_tmp / "multirun").glob("*/*"))
    assert "evaluation.episodes: 0" in (sweep / "0" / "main.log").read_text()
    client = MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("rexlab").experiment_id])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FAILED" and "jobs.md" in all_artifacts(client, parent.info.run_id)


def test_bc_learns_no_reward_it_does_not_use(in_tmp: Path) -> None:
    cfg, choices = compose_with_choices("experiment=debug", "policy=bc", "progress=false", "tracking=none",
                                        "video.enabled=false")
    metrics = run_pipeline(cfg, choices, in_tmp / "out")
    assert not (in_tmp / "out" / "checkpoints" / "reward").exists() and "reward/val_pair_accuracy" not in metrics
    assert (in_tmp / "out" / "checkpoints" / "demos.npz").exists() and "eval/true_return_mean" in metrics

