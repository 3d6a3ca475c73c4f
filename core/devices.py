"""Where a run computes: the `trainer` config group (conf/trainer/*.yaml), and the ranks of a data-parallel run.

`Devices` holds Lightning's accelerator, devices, strategy and precision for every stage's fit, and the torch
threads of the job. A stage whose fit is plain supervised learning (a reward model, SFT, pretraining: its
plugin's `capabilities.data_parallel`) trains with `strategy` on `devices` devices; the others (PPO, whose
rollouts are sequential) on one device of the same accelerator, as SB3 and CleanRL do: they scale through
sweeps. Model code computes on the device of the network it runs (inputs go there; NumPy and environments
stay on the CPU); Lightning moves a module to the device for its fit and back to the CPU after it.

A data-parallel run is several processes over one output folder (rank 0 and its followers: Lightning's
subprocess launcher starts them at the first data-parallel fit; on SLURM, one task each). Only rank 0
tracks, saves artifacts and runs the stages that are not data-parallel; a follower waits for those in the
run's state file and loads what they saved (core/pipeline.py).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from core.schema import PositiveInt

log = logging.getLogger(__name__)

SMALL_NETS = frozenset({"vector"})  # observation kinds whose plugins build small MLPs: one torch thread on the CPU
Precision = Literal["32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64"]


def rank() -> int:
    """This process's global rank in a data-parallel run (0 when there is none), as Lightning reads it from the
    environment its launchers and SLURM set (RANK, LOCAL_RANK, SLURM_PROCID)."""
    return int(rank_zero_only.rank)  # type: ignore[attr-defined]  # (set by Lightning at import)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity, which SLURM and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not Linux)
        return os.cpu_count() or 1


def parallel_jobs() -> int:
    """How many jobs of this sweep run at once on this machine: the joblib launcher's n_jobs (-1: all cores),
    else 1 (one job, or a launcher that gives each job its own cores: SLURM's cpus_per_task, Ray's num_cpus)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        launcher = HydraConfig.get().launcher
    except (ImportError, ValueError):  # not under Hydra
        return 1
    n_jobs = launcher.get("n_jobs") if "joblib" in str(launcher.get("_target_", "")) else None
    if n_jobs is None:
        return 1
    return available_cores() if int(n_jobs) < 0 else max(1, int(n_jobs))


@dataclass
class Devices:
    """trainer=cpu|gpu|ddp|fsdp (conf/trainer/). accelerator: Lightning's (cpu, gpu, cuda, mps, auto);
    devices: devices of the data-parallel stages (processes on the CPU); strategy: Lightning's strategy for
    them (auto: one device, ddp, fsdp); precision: Lightning's precision; threads: torch's intra-op threads in
    each process (None: the cores the job may use, shared by the sweep's parallel jobs and the run's processes
    on the CPU; the environment's OMP_NUM_THREADS where set)."""

    accelerator: Literal["cpu", "gpu", "cuda", "mps", "auto"] = "cpu"
    devices: PositiveInt = 1
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    precision: Precision = "32"
    threads: PositiveInt | None = None

    def __post_init__(self) -> None:
        self.precision = str(self.precision)  # type: ignore[assignment]  # (`precision: 32` on the command line)

    @property
    def distributed(self) -> bool:
        """Whether the data-parallel stages run in several processes."""
        return self.strategy != "auto" and self.devices > 1

    @property
    def on_cpu(self) -> bool:
        return self.accelerator == "cpu" or (self.accelerator == "auto" and not torch.cuda.is_available())

    @property
    def deterministic(self) -> bool | Literal["warn"]:
        """torch's deterministic algorithms: required on the CPU (same seed, same run); on a GPU, where some
        kernels have none, a warning names them instead of an error."""
        return True if self.on_cpu else "warn"

    def fit_settings(self, data_parallel: bool) -> dict[str, Any]:
        """Lightning Trainer arguments for a fit: the data-parallel strategy over every device where the fit
        is a stage's data-parallel one, else one device."""
        if data_parallel and self.strategy != "auto":
            strategy: Any = self.strategy
            if self.strategy == "ddp":  # (a backbone's pooler, say, takes no part in a reward model's loss)
                from lightning.pytorch.strategies import DDPStrategy

                strategy = DDPStrategy(process_group_backend="gloo" if self.on_cpu else None,
                                       find_unused_parameters=True,
                                       broadcast_buffers=False)  # (no buffer differs between the processes)
            return {"accelerator": self.accelerator, "devices": self.devices, "strategy": strategy,
                    "precision": self.precision}
        return {"accelerator": self.accelerator, "devices": 1, "precision": self.precision}

    def thread_count(self, observations: str | None = None) -> int:
        """The torch threads of this process: `threads`, else OMP_NUM_THREADS, else one where the run's
        observations are vectors on the CPU (its nets are small MLPs: a second thread bought 4% of wall time and
        cost 70% more CPU time on the default run, and threads spin against other jobs), else this job's share of
        the cores (its affinity, divided by the sweep's parallel jobs and by the run's processes on the CPU)."""
        if self.threads is not None:
            return int(self.threads)
        if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
            return int(os.environ["OMP_NUM_THREADS"])
        if observations in SMALL_NETS and self.on_cpu:
            return 1
        processes = self.devices if self.distributed and self.on_cpu else 1
        return max(1, available_cores() // (parallel_jobs() * processes))

    def apply_threads(self, observations: str | None = None) -> int:
        """Set torch's threads in this process (thread_count for the run's observation kind); returns the number."""
        n = self.thread_count(observations)
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        log.info("torch threads: %d (of %d cores this job may use)", n, available_cores())
        return n
