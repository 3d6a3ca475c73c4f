"""A follower of a data-parallel run: a process of rank > 0 (trainer=ddp|fsdp; core/devices.py).

Rank 0 runs the recipe as usual. A follower runs only the fits of the data-parallel stages with it (their
collectives need every process); before each of them it waits until rank 0 has finished the stages before
it, loads what they saved (as a resumed run does) and takes rank 0's random states as of then, so that both
draw the same data; after each, it loads what rank 0 saved of it. It writes into a scratch folder of its own
(deleted at its end), tracks nothing and ends after the last data-parallel stage.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from core.devices import rank
from core.run import RunContext, set_rng_state
from core.runs import process_alive
from core.stages import Artifacts, Settings, Stage

log = logging.getLogger(__name__)

POLL_S = 1.0


class LeaderState(Protocol):
    """What a follower reads of rank 0's run state (core/pipeline.py's RunState)."""

    finished: list[str]
    rng: dict[str, Any]
    pid: int
    host: str


def follow(stages: list[Stage], s: Settings, artifacts: Artifacts, context: Callable[[Stage, Settings], RunContext],
           leader: Callable[[], LeaderState]) -> dict[str, float]:
    """Take part in the data-parallel stages of rank 0's run (its output folder: `s`); returns no metrics.
    leader: reads rank 0's run state."""
    last = max((k for k, stage in enumerate(stages) if stage.data_parallel), default=-1)
    scratch = s.checkpoints.parent / f".rank{rank()}"
    mine = replace(s, checkpoints=scratch / "checkpoints")  # what the stage writes, rank 0 writes for real
    log.info("rank %d: follows rank 0 in the data-parallel stage(s) %s", rank(),
             ", ".join(stage.name for stage in stages if stage.data_parallel) or "(none)")
    try:
        for k, stage in enumerate(stages[:last + 1]):
            if stage.data_parallel:
                state = _wait(leader, stages[k - 1].name if k else None)
                if stage.name in state.finished:  # (a resumed run's)
                    stage.load(artifacts, s)
                    continue
                set_rng_state(state.rng)
                stage.run(artifacts, mine, context(stage, mine))
                _wait(leader, stage.name)  # then the artifacts rank 0 saved, not this process's copy
                stage.load(artifacts, s)
            else:
                _wait(leader, stage.name)
                stage.load(artifacts, s)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {}


def _wait(leader: Callable[[], LeaderState], stage: str | None) -> LeaderState:
    """Rank 0's run state once it has finished `stage` (None: once it exists); raises if rank 0 is gone."""
    while True:
        try:
            state = leader()
        except (FileNotFoundError, EOFError):  # (not written yet)
            state = None
        if state is not None and (stage is None or stage in state.finished):
            return state
        if state is not None and process_alive(state.pid, state.host) is False:
            raise RuntimeError(f"rank {rank()}: rank 0 (process {state.pid}) ended before finishing stage '{stage}'")
        time.sleep(POLL_S)
