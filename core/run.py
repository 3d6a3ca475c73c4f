"""What every stage of a run shares: seed, output folder, tracker, how to build and fit a Trainer, and
how a stage's training survives a restart.

Checkpoints: a stage's own fit (the one its RunContext carries `checkpoint` for; nested fits, such as
the learner behind learner_checkpoints or D-REX's behavioural clone, get a context without it) writes a
Lightning checkpoint every `checkpoint.every` training steps, atomically, to one file. It holds what
Lightning saves (the module's weights, optimizers, schedulers, loop counters, the data loaders'
positions through `ResumableLoader`), the module's own state (`on_save_checkpoint`: environments,
normalisers, counters, ...), the global random states and the metric history. A resumed stage fits
from that file and goes on as if it had never stopped.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, Dataset, Sampler

from core import signals
from core.artifacts import replace_atomically
from core.devices import Devices
from core.errors import NonFiniteError
from core.schema import ConfigError
from core.tracking import Tracker

log = logging.getLogger(__name__)

# Lightning's notices about GPUs, TPUs and dataloader workers say nothing useful for this CPU harness.
for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
    logging.getLogger(name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*`training_step` returned `None`.*")  # PPO's target_kl skip
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
# Validation is whole on every process of a data-parallel fit (core/devices.py): its metrics agree without syncing.
warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")
# A frozen reference model or a pretrained backbone in eval mode inside a training module is rexlab's intent.
warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")


class TrackerLogger(Logger):
    """Lightning logger that forwards `self.log(...)` metrics to a Tracker, renaming namespaces."""

    def __init__(self, tracker: Tracker, rename: dict[str, str], step_offset: int = 0) -> None:
        super().__init__()
        self.tracker = tracker
        self.rename = rename
        self.step_offset = step_offset

    @property
    def name(self) -> str:
        return "rexlab"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The run's resolved config is logged once by the pipeline; nothing to add here."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = {rename_metric(k, self.rename): v for k, v in metrics.items() if k != "epoch"}
        self.tracker.log_metrics(metrics, (step or 0) + self.step_offset)


def rename_metric(key: str, rename: dict[str, str]) -> str:
    """Replace a metric's namespace ("train/x" -> "learner/x") if `rename` maps it."""
    namespace, _, rest = key.partition("/")
    return f"{rename[namespace]}/{rest}" if rest and namespace in rename else key


# ---------------------------------------------------------------- random states
def rng_state() -> dict[str, Any]:
    """The global random states a run draws from: Python's, NumPy's and torch's (CPU)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


# ---------------------------------------------------------------- data order that survives a restart
class ResumableSampler(Sampler[int]):
    """Indices 0..n-1, each epoch in a fresh random order (shuffle) or in order, that can start an epoch
    part-way after a restart. A shuffled one (a training set) is split in a data-parallel fit: each process
    takes every world-th index of the epoch's order from its rank on (the last n % world dropped, so that every
    process takes as many steps), so that their batches together are one process's batch of world times the size.

    The random order is drawn exactly as torch's RandomSampler draws it (a seed from the global torch
    generator when the epoch's first index is taken, then randperm), so a run's random stream is the same
    as with DataLoader(shuffle=True). `state_dict` is the epoch's seed and the indices taken so far;
    after `load_state_dict`, the next epoch is that one, without the indices already taken.
    """

    def __init__(self, n: int, shuffle: bool = True) -> None:
        self.n, self.shuffle = n, shuffle
        self.seed: int | None = None
        self.taken = 0
        self._resume: tuple[int | None, int] | None = None

    def _share(self) -> tuple[int, int]:
        """(rank, world size) of this process in a data-parallel fit, else (0, 1)."""
        if self.shuffle and torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        return self.n // self._share()[1]

    def __iter__(self) -> Iterator[int]:
        if self._resume is not None:
            (seed, skip), self._resume = self._resume, None
        else:
            seed = int(torch.empty((), dtype=torch.int64).random_().item()) if self.shuffle else None
            skip = 0
        self.seed, self.taken = seed, skip
        order = (torch.randperm(self.n, generator=torch.Generator().manual_seed(seed)).tolist() if seed is not None
                 else list(range(self.n)))
        rank, world = self._share()
        if world > 1:
            order = order[:len(self) * world][rank::world]
        for index in order[skip:]:
            self.taken += 1
            yield index

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "taken": self.taken}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = (state["seed"], int(state["taken"]))


class ResumableLoader(DataLoader):
    """A DataLoader over a ResumableSampler whose position Lightning keeps in its checkpoints (the
    state_dict interface of Lightning's resumable loaders). `batch_size=None` yields single indices."""

    def __init__(self, dataset: Dataset | range, batch_size: int | None, shuffle: bool = True,
                 **kwargs: Any) -> None:
        self.resumable = ResumableSampler(len(dataset), shuffle)  # type: ignore[arg-type]
        super().__init__(dataset, batch_size=batch_size, sampler=self.resumable, **kwargs)  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, Any]:
        return self.resumable.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.resumable.load_state_dict(state)


# ---------------------------------------------------------------- checkpoints of a stage's fit
@dataclass
class Checkpointing:
    """path: the stage's checkpoint file; every: training steps between checkpoints; resume: continue
    from `path` where it exists (a resumed run); fits: how many fits used it (one may: a second one is a
    plugin's inner fit that should have run in run.nested())."""

    path: Path
    every: int
    resume: bool = False
    fits: int = 0


def _validation_follows(trainer: L.Trainer) -> bool:
    """Whether the fit validates right after the training step that just ended (Lightning's own test)."""
    fetcher = trainer.fit_loop._data_fetcher
    return bool(trainer.enable_validation and fetcher is not None
                and trainer.fit_loop.epoch_loop._should_check_val_fx(fetcher))


class FiniteGuard(Callback):
    """Stops a fit at the first non-finite training loss, logged metric or gradient norm, with the stage,
    step and quantity named and the config keys most likely at fault (RunContext.non_finite). It runs
    before StageCheckpoint, so the bad state is never checkpointed."""

    def __init__(self, run: RunContext) -> None:
        self.run = run

    def _check(self, trainer: L.Trainer, values: dict[str, Any]) -> None:
        for name, value in values.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.detach().item()
            if isinstance(value, float) and not math.isfinite(value):
                self.run.non_finite(f"{name} ({value})", trainer.fit_loop.total_batch_idx + 1)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self._check(trainer, {"the training loss": loss, **dict(trainer.callback_metrics)})

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad.detach().norm() for group in optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        if grads:
            self._check(trainer, {"the gradient norm": torch.linalg.vector_norm(torch.stack(grads))})

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._check(trainer, dict(trainer.callback_metrics))


class StageProgressBar(TQDMProgressBar):
    """Lightning's bar, labelled with the stage and what one of its steps is ("reward: batches of 1 snippet
    pair", not "Epoch 0"), without Lightning's version number."""

    def __init__(self, label: str, refresh_rate: int) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=True)
        self.label = label

    def init_train_tqdm(self) -> Tqdm:
        return Tqdm(desc=self.label, position=2 * self.process_position, disable=self.is_disabled, leave=True,
                    dynamic_ncols=True, file=sys.stdout, smoothing=0, bar_format=self.BAR_FORMAT)

    def init_validation_tqdm(self) -> Tqdm:
        """No bar for the short validations inside a fit (their metrics go to the training bar)."""
        return Tqdm(disable=True)

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        """Lightning's, with the stage's label instead of "Epoch 0"."""
        self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.total = convert_inf(self.total_train_batches)
        if trainer.max_epochs and trainer.max_epochs > 1:
            self.train_progress_bar.set_description(f"{self.label}, epoch {trainer.current_epoch + 1}")

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class SignalsFirst(Callback):
    """On every fit: SIGTERM goes to core/signals.py's handler, not to Lightning's, which would end the fit (or,
    nested in a stage's step, the stage's fit) at its next loop boundary without the checkpoint."""

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        signals.reclaim()


class StageCheckpoint(Callback):
    """Writes the fit's checkpoint every `every` training steps (after that step's validation, where one
    follows), after a step in which the module set `checkpoint_now` (PPO, before a step that waits for people),
    and when a signal asked the run to stop (then raises signals.Interrupted); a resumed fit gets
    back the random states and metric history as of its checkpoint."""

    def __init__(self, checkpointing: Checkpointing, tracker: Tracker) -> None:
        self.path, self.every, self.tracker = checkpointing.path, checkpointing.every, tracker
        self._restored: dict[str, Any] | None = None
        self._pending = False

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        asked = getattr(module, "checkpoint_now", False)  # a module sets it in a step to checkpoint at its end
        if not asked and signals.requested() is None and (trainer.fit_loop.total_batch_idx + 1) % self.every:
            return
        if _validation_follows(trainer):  # save with its metrics: a resumed fit does not validate this step again
            self._pending = True
        else:
            self.checkpoint(trainer)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._pending and trainer.training is False and trainer.state.fn == "fit":
            self._pending = False
            self.checkpoint(trainer)

    def checkpoint(self, trainer: L.Trainer) -> None:
        """Save; stop if a signal asked to."""
        self.save(trainer)
        stop = signals.requested()
        if stop is not None:
            raise signals.Interrupted(stop)

    def save(self, trainer: L.Trainer) -> None:
        """Every process of a data-parallel fit takes part (Lightning's save synchronises them); rank 0 writes."""
        if trainer.is_global_zero:
            replace_atomically(self.path, lambda partial: trainer.save_checkpoint(partial, weights_only=False))
        else:
            trainer.save_checkpoint(self.path, weights_only=False)  # (writes nothing off rank 0)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state(), "history": {k: list(v) for k, v in self.tracker.history.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._apply_restored(trainer)

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._apply_restored(trainer)  # a fit resumed from its last step runs no training loop

    def _apply_restored(self, trainer: L.Trainer) -> None:
        """After the data loaders are made (their iterators draw from the random stream, as they did then)."""
        if self._restored is not None:
            set_rng_state(self._restored["rng"])
            self.tracker.restore_history(self._restored["history"])
            log.info("resumed from %s at training step %d", self.path, trainer.fit_loop.total_batch_idx + 1)
            self._restored = None


@dataclass
class RunContext:
    """seed: base seed of the run; output_dir: where checkpoints and plots go; tracker: metrics sink;
    progress: show progress bars; rename: metric namespace renames for a nested stage (the learner
    behind learner_checkpoints logs "train/*" as "learner/*"); step_offset: added to every step
    logged, so a stage run again (a reward refit while the policy trains) continues its curves;
    checkpoint: how the stage's own fit checkpoints (None: it does not; `nested()` and `shifted()` drop it,
    so only one fit of a stage, its main one, writes and reads the stage's checkpoint). stage: the stage's
    name; suspects: `key=value` of its config keys most likely at fault when its numbers go non-finite
    (learning rates, input files); name: the run's name (for plot titles). devices: the accelerator, strategy
    and precision of the fits (trainer=...); data_parallel: the stage's own fit is plain supervised learning
    that may run with the data-parallel strategy over every device (nested fits run on one device)."""

    seed: int
    output_dir: Path
    tracker: Tracker
    progress: bool = True
    rename: dict[str, str] | None = None
    step_offset: int = 0
    checkpoint: Checkpointing | None = None
    stage: str = ""
    suspects: tuple[str, ...] = ()
    name: str = ""
    devices: Devices = field(default_factory=Devices)
    data_parallel: bool = False

    def scoped(self, **rename: str) -> RunContext:
        """The same context with metric namespaces renamed, e.g. scoped(train="learner") for the learner
        behind learner_checkpoints (whose fit is its stage's own, so it keeps the checkpoint)."""
        return replace(self, rename={**(self.rename or {}), **rename})

    def shifted(self, step_offset: int) -> RunContext:
        """A nested fit's context with `step_offset` added to the steps of everything it logs."""
        return replace(self, step_offset=step_offset, checkpoint=None, data_parallel=False)

    def nested(self) -> RunContext:
        """The context for a fit inside the stage's own work (it does not checkpoint the stage)."""
        return replace(self, checkpoint=None, data_parallel=False)

    @property
    def spread(self) -> bool:
        """Whether this fit is the stage's own data-parallel one (nested fits never are)."""
        return self.data_parallel and self.checkpoint is not None

    @property
    def processes(self) -> int:
        """The processes the stage's own fit runs in (several: a data-parallel stage with trainer=ddp|fsdp)."""
        return self.devices.devices if self.spread and self.devices.distributed else 1

    def per_process(self, batch_size: int) -> int:
        """Each process's share of a fit's batch: a plugin's batch_size is the global batch, whatever the devices."""
        if batch_size % self.processes:
            raise ConfigError(f"stage '{self.stage}': its batch_size ({batch_size}) cannot be split evenly over "
                              f"trainer.devices={self.processes} processes; make it a multiple of {self.processes}")
        return batch_size // self.processes

    def non_finite(self, quantity: str, step: int) -> None:
        """Stop the stage: `quantity` (e.g. "the PPO loss (nan)") went non-finite at `step`."""
        keys = f" The config keys most likely at fault: {', '.join(self.suspects)}." if self.suspects else ""
        where = f"stage '{self.stage}'" if self.stage else "training"
        raise NonFiniteError(f"{where}: {quantity} at training step {step}, so the stage stops; its model is not "
                             f"saved and its last good checkpoint (if any) is kept.{keys}")

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log metrics with this context's namespace renames applied."""
        self.tracker.log_metrics({rename_metric(k, self.rename or {}): v for k, v in metrics.items()},
                                 step + self.step_offset)

    def trainer(self, max_steps: int, unit: str = "training steps", **kwargs: Any) -> L.Trainer:
        """A Trainer on the run's devices (trainer=...) that logs to the tracker and, for the stage's own fit,
        checkpoints it. unit: what one of its steps is, for the progress bar (e.g. "PPO iterations of 256 env
        steps")."""
        callbacks: list[Callback] = [FiniteGuard(self), SignalsFirst()]
        if self.progress:  # about 100 redraws per fit: enough to watch, few enough for a CI log
            label = f"{self.stage}: {unit}" if self.stage else unit
            callbacks.append(StageProgressBar(label, refresh_rate=max(1, max_steps // 100)))
        if self.checkpoint is not None:
            callbacks.append(StageCheckpoint(self.checkpoint, self.tracker))
        settings: dict[str, Any] = dict(
            **self.devices.fit_settings(self.spread),
            use_distributed_sampler=False,  # ResumableLoader splits the training data itself; validation is whole
            max_steps=max_steps, max_epochs=-1,
            logger=TrackerLogger(self.tracker, self.rename or {}, self.step_offset), callbacks=callbacks,
            enable_progress_bar=self.progress, enable_checkpointing=False, enable_model_summary=False,
            deterministic=self.devices.deterministic, default_root_dir=str(self.output_dir),
        )
        return L.Trainer(**{**settings, **kwargs})

    def fit(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """trainer.fit(module), continuing from the stage's checkpoint when resuming; a signal stops
        it at the end of a training step, after a checkpoint (signals.py)."""
        spec = self.checkpoint
        if spec is None:
            trainer.fit(module)
            return
        spec.fits += 1
        if spec.fits > 1:
            raise RuntimeError(f"a second fit in one stage would share its checkpoint {spec.path}: a plugin's inner "
                               f"fit must run in run.nested()")
        start = str(spec.path) if spec.resume and spec.path.exists() else None
        with signals.deferred():
            trainer.fit(module, ckpt_path=start, weights_only=False)  # our own file: environments, data, states
        stop = signals.requested()
        if stop is not None:  # asked after the last training step: keep the finished fit, then stop
            for callback in trainer.callbacks:  # type: ignore[attr-defined]
                if isinstance(callback, StageCheckpoint):
                    callback.save(trainer)
            raise signals.Interrupted(stop)
