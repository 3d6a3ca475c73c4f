"""The trainer group's Devices: Lightning's settings for data-parallel and other fits, and each job's threads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from core.devices import Devices, available_cores, parallel_jobs
from tests.conftest import compose_config


def test_only_a_stage_s_data_parallel_fit_gets_the_strategy_and_every_device() -> None:
    ddp = Devices(accelerator="cpu", devices=2, strategy="ddp")
    spread, single = ddp.fit_settings(data_parallel=True), ddp.fit_settings(data_parallel=False)
    assert spread["devices"] == 2 and type(spread["strategy"]).__name__ == "DDPStrategy"
    assert spread["strategy"].process_group_backend == "gloo"  # on the CPU
    assert single == {"accelerator": "cpu", "devices": 1, "precision": "32"}  # PPO: one device
    assert Devices().fit_settings(True) == single and not Devices().distributed
    assert Devices(accelerator="cpu").deterministic is True and Devices(accelerator="gpu").deterministic == "warn"


def test_threads_come_from_the_setting_then_omp_num_threads_then_one_for_vectors_else_the_job_s_share(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert Devices(threads=3).thread_count() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert Devices().thread_count() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert Devices().thread_count() == available_cores()  # one job alone
    assert Devices(accelerator="cpu", devices=2, strategy="ddp").thread_count() == max(1, available_cores() // 2)
    assert Devices(accelerator="gpu", devices=2, strategy="ddp").thread_count() == available_cores()
    assert Devices().thread_count("vector") == 1  # small MLPs: one thread, so jobs side by side do not spin
    assert Devices().thread_count("image") == Devices().thread_count("text") == available_cores()
    assert Devices(threads=2).thread_count("vector") == 2  # the user's setting wins


def test_the_trainer_options_compose_with_their_documented_defaults() -> None:
    assert compose_config().trainer.accelerator == "cpu"
    ddp = compose_config("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2").trainer
    assert (ddp.strategy, ddp.devices, ddp.accelerator, str(ddp.precision)) == ("ddp", 2, "cpu", "32")
    assert compose_config("trainer=fsdp").trainer.strategy == "fsdp"
    assert compose_config("trainer=gpu").trainer.accelerator == "gpu"


@pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/\w+' is validated")
def test_a_joblib_sweep_s_jobs_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from core.compat import CONF_DIR

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"), hydra_config_reset():
        for n_jobs, expected in ((2, max(1, available_cores() // 2)), (-1, 1), (1, available_cores())):
            cfg = compose("config", overrides=["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}"],
                          return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)  # as in each of the sweep's jobs
            assert parallel_jobs() == (available_cores() if n_jobs < 0 else n_jobs)
            assert Devices().thread_count() == expected, n_jobs
        HydraConfig.instance().set_config(compose("config", return_hydra_config=True))  # the basic launcher
        assert parallel_jobs() == 1


@contextmanager
def hydra_config_reset() -> Iterator[None]:
    """HydraConfig as set inside, cleared after (as outside any Hydra job)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        yield
    finally:
        HydraConfig.instance().cfg = None  # type: ignore[assignment]
