"""rexlab entry point: `python main.py reward=trex policy=ppo env=cartpole` (see README.md)."""

import logging
import sys

import hydra
from omegaconf import DictConfig

from core.cli import add_variant_keys, quote_bool_choices
from core.errors import NamedError
from core.pipeline import hydra_context, run_pipeline
from core.signals import Interrupted, requeue_handler

log = logging.getLogger("rexlab")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    context = hydra_context()
    try:
        metrics = run_pipeline(cfg, **context)
    except Interrupted as stop:  # SIGTERM / SIGINT: checkpointed, the run marked KILLED, the resume command printed
        requeue = requeue_handler(stop.signum)
        if requeue is not None:  # submitit's preemption handler: it requeues the job, which continues the run
            requeue(stop.signum, None)
        sys.exit(stop.exit_code)
    except Exception as err:  # into the job's main.log as well as on the console
        if isinstance(err, NamedError):
            log.error("%s", err)  # the message says what and where: no traceback
        else:
            log.exception("the run failed")
        if context["job"] is not None:
            raise  # a multirun job: Hydra records the failure and goes on with the other jobs
        sys.exit(2 if isinstance(err, NamedError) else 1)
    return metrics.get("eval/true_return_mean", float("nan"))  # (none from a data-parallel run's rank > 0)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *add_variant_keys(quote_bool_choices(sys.argv[1:]))]
    main()
