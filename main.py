"""rexlab entry point: `python main.py reward=trex policy=ppo env=cartpole` (see README.md)."""

import sys

import hydra
from omegaconf import DictConfig

from core.cli import add_variant_keys, quote_bool_choices
from core.pipeline import hydra_context, run_pipeline
from core.signals import Interrupted


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        metrics = run_pipeline(cfg, **hydra_context())
    except Interrupted as stop:  # SIGTERM / SIGINT: checkpointed, the run marked KILLED, the resume command printed
        sys.exit(stop.exit_code)
    return metrics["eval/true_return_mean"]


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *add_variant_keys(quote_bool_choices(sys.argv[1:]))]
    main()
