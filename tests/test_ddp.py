"""trainer=ddp on the CPU (gloo, 2 processes started by Lightning): the data-parallel stages train as one
process does at the same global batch, one tracked run, only rank 0 writes."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from core.pipeline import STATE
from core.run import RunContext
from core.schema import ConfigError
from core.tracking import NullTracker

ROOT = Path(__file__).resolve().parents[1]
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def run_main(args: list[str], cwd: Path, folder: str) -> Path:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), *args, "progress=false", "video.enabled=false",
                           f"hydra.run.dir={cwd / folder}"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cwd / folder


def history(folder: Path) -> dict[str, list[tuple[int, float]]]:
    with open(folder / "checkpoints" / STATE, "rb") as f:
        return pickle.load(f).history  # type: ignore[no-any-return]


def test_ddp_on_two_cpu_processes_matches_one_process_at_the_same_global_batch(in_tmp: Path) -> None:
    common = ["experiment=debug", "reward.batch_size=16"]
    one = run_main([*common, "tracking=none"], in_tmp, "one")
    two = run_main([*common, *DDP, f"tracking.uri=sqlite:///{in_tmp / 'mlflow.db'}"], in_tmp, "two")
    a, b = history(one), history(two)
    for key in ("reward/train_loss", "reward/val_loss"):  # (the training loss: averaged over the processes)
        assert [s for s, _ in a[key]] == [s for s, _ in b[key]], key
        gap = np.abs(np.array([v for _, v in a[key]]) - np.array([v for _, v in b[key]]))
        assert len(gap) >= 4 and gap.max() < 2e-3, (key, gap)  # measured: at most 1.7e-4
    client = MlflowClient(tracking_uri=f"sqlite:///{in_tmp / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name("rexlab").experiment_id])
    assert [r.info.status for r in found] == ["FINISHED"]  # one run: rank 1 tracks nothing
    assert found[0].data.metrics["reward/val_pair_accuracy"] == pytest.approx(a["reward/val_pair_accuracy"][-1][1],
                                                                              abs=0.05)
    assert not list(two.glob(".rank*"))  # the follower's scratch folder is gone
    assert (two / "checkpoints" / "reward" / "reward.pt").is_file()


def test_a_batch_that_does_not_split_over_the_processes_is_refused_by_stage() -> None:
    from core.devices import Devices
    from core.run import Checkpointing

    run = RunContext(seed=0, output_dir=Path("."), tracker=NullTracker(), stage="reward",
                     checkpoint=Checkpointing(Path("x.ckpt"), 10), data_parallel=True,
                     devices=Devices(accelerator="cpu", devices=2, strategy="ddp"))
    assert run.per_process(8) == 4
    with pytest.raises(ConfigError, match=r"stage 'reward': its batch_size \(3\) cannot be split evenly over "
                                          r"trainer.devices=2"):
        run.per_process(3)
    assert run.nested().per_process(3) == 3  # a nested fit runs in one process


def test_chatgpt_recipe_with_ddp_runs_its_supervised_stages_on_two_processes(in_tmp: Path, tiny_lm_dir: str,
                                                                             tiny_encoder_dir: str) -> None:
    folder = run_main(["experiment=chatgpt_recipe", "budget=debug", f"env.model={tiny_lm_dir}",
                       f"reward.model={tiny_encoder_dir}", "tracking=none", *DDP], in_tmp, "recipe")
    h = history(folder)
    for key in ("pretrain/train_loss", "sft/train_loss", "reward/train_loss", "train/kl"):
        assert h.get(key), key
    for saved in ("pretrain", "sft", "policy", "reward"):
        assert (folder / "checkpoints" / saved).is_dir(), saved
    assert not list(folder.glob(".rank*"))


def test_ddp_in_a_multirun_is_refused_before_any_work(in_tmp: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "-m", "experiment=debug", "seed=0,1", *DDP,
                           "tracking=none"], cwd=in_tmp, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert "trainer=ddp in a multirun" in out and "run each job alone" in out, out[-3000:]
    assert not list(in_tmp.glob("multirun/*/*/*/checkpoints/preferences.pkl"))  # nothing was run
