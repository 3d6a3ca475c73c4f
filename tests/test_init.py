"""Starting from another run: policy.init and reward.init load that run's artifact (a folder or runs:/<id>),
skip the stage that would have made it, tag the run, and refuse a mismatch before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from core.compat import IncompatibleError
from core.pipeline import run_pipeline
from tests.conftest import compose_with_choices

DEBUG = ["experiment=debug", "progress=false", "video.enabled=false"]


@pytest.fixture(scope="module")
def trex_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, float]]:
    """A finished T-REX CartPole run at the debug budget: its folder, MLflow URI and metrics."""
    folder = tmp_path_factory.mktemp("trex")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    cfg, choices = compose_with_choices(*DEBUG, f"tracking.uri={uri}")
    return folder / "out", uri, run_pipeline(cfg, choices, folder / "out")


def test_policy_init_starts_ppo_from_that_policy(in_tmp: Path, trex_run: tuple) -> None:
    folder, uri, first = trex_run
    client = MlflowClient(uri)
    [source] = client.search_runs([client.get_experiment_by_name("rexlab").experiment_id])
    cfg, choices = compose_with_choices(*DEBUG, "reward=true", f"policy.init=runs:/{source.info.run_id}",
                                        f"tracking.uri={uri}", "policy.total_timesteps=512")
    metrics = run_pipeline(cfg, choices, in_tmp / "out")
    runs = client.search_runs([client.get_experiment_by_name("rexlab").experiment_id], "tags.`init.policy` != ''")
    [run] = runs
    assert run.data.tags["init.policy"].startswith(f"runs:/{source.info.run_id} (")
    # two PPO iterations from the trained policy keep its level; a fresh one starts near 20
    assert metrics["eval/true_return_mean"] > 0.6 * first["eval/true_return_mean"] > 40
    assert not (in_tmp / "out" / "checkpoints" / "demos.npz").exists()  # no demonstrations gathered


def test_reward_init_loads_the_reward_and_skips_preferences_and_reward_training(in_tmp: Path, trex_run: tuple) -> None:
    folder, _, _ = trex_run
    cfg, choices = compose_with_choices(*DEBUG, f"reward.init={folder}", "tracking=none")
    run_pipeline(cfg, choices, in_tmp / "out")
    assert not (in_tmp / "out" / "checkpoints" / "preferences.pkl").exists()
    import torch

    saved = torch.load(folder / "checkpoints" / "reward" / "reward.pt", weights_only=False)
    loaded = torch.load(in_tmp / "out" / "checkpoints" / "reward" / "reward.pt", weights_only=False)
    for key in saved["net"]:
        np.testing.assert_array_equal(saved["net"][key], loaded["net"][key])


def test_a_policy_for_another_env_is_refused_before_any_work(in_tmp: Path, trex_run: tuple) -> None:
    folder, _, _ = trex_run
    cfg, choices = compose_with_choices(*DEBUG, "env=pendulum", "reward=true", f"policy.init={folder}",
                                        "tracking=none")
    with pytest.raises(IncompatibleError, match=r"policy.init=.* env=cartpole .*this run's env=pendulum"):
        run_pipeline(cfg, choices, in_tmp / "out")
    assert not (in_tmp / "out").exists()


def test_a_control_reward_into_text_is_refused_naming_both(in_tmp: Path, trex_run: tuple, char_lm_dir: str,
                                                          tiny_encoder_dir: str) -> None:
    folder, _, _ = trex_run
    cfg, choices = compose_with_choices(*DEBUG, "env=text", f"env.model={char_lm_dir}", "reward=bradley_terry",
                                        f"reward.model={tiny_encoder_dir}", "preference=synthetic",
                                        f"reward.init={folder}", "tracking=none")
    with pytest.raises(IncompatibleError, match="holds a plugins.rewards.trex.TREX reward model; this run's reward is "
                                                "plugins.rewards.bradley_terry.BradleyTerry"):
        run_pipeline(cfg, choices, in_tmp / "out")
    assert not (in_tmp / "out").exists()
