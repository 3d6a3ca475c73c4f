"""The pipeline: demonstrations -> preferences -> reward -> policy -> evaluation.

It names no concrete plugin: every part comes from the config's `_target_`s, and the capability
check runs before any of them does work. Each finished stage writes its checkpoint at once, and the
tracking run is closed (FAILED on an error) whatever happens, so nothing done is lost.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from core.compat import check_compatible, check_fields, check_nested, plugin_class, uses_source
from core.demo_files import save_demos
from core.evaluation import pearson, returns, rollout
from core.interfaces import Environment, Optimizer, Policy, PreferenceSource, RewardModel
from core.plots import learning_curve, reward_extrapolation
from core.run import RunContext
from core.tracking import Tracker
from core.types import Preferences, Trajectory
from core.video import record_episode

log = logging.getLogger(__name__)
GROUPS = ("env", "reward", "preference", "policy")


def run_pipeline(cfg: DictConfig, choices: dict[str, str], output_dir: Path, sweep_dir: Path | None = None,
                 job: int | None = None, overrides: str = "") -> dict[str, float]:
    """Run every stage the config asks for; returns the final metrics.

    choices: the option picked in each config group (for names, tags and messages).
    sweep_dir, job: the multirun's sweep folder (the run attaches to the sweep's parent run) and
    the job's number (added to the run name). overrides: the command line's overrides (a tag).
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True)
    classes = {g: plugin_class(cfg[g]) for g in GROUPS if g != "env"}
    source_used = uses_source(classes)
    used = ("env", "reward", "policy") + (("preference",) if source_used else ())  # an unused source is not built
    check_fields(cfg, choices, used)
    env: Environment = instantiate(cfg.env)
    check_compatible(env, choices, classes)
    check_nested(cfg, env, choices, used[1:])
    reward: RewardModel = instantiate(cfg.reward)
    optimizer: Optimizer = instantiate(cfg.policy)
    source: PreferenceSource | None = instantiate(cfg.preference) if source_used else None

    tracker: Tracker = instantiate(cfg.tracking)
    name = "-".join(f"{choices[g]}" for g in GROUPS if g != "preference" or source_used) + f"-s{cfg.seed}"
    if job is not None:
        name += f"-job{job}"
    tags = {f"choice.{g}": choices[g] for g in GROUPS} | ({"overrides": overrides} if overrides else {})
    tracker.start(name, cfg, sweep_dir, tags)
    status = "FAILED"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        config_file = output_dir / "config.yaml"
        OmegaConf.save(cfg, config_file, resolve=True)
        tracker.log_artifact(config_file)
        run = RunContext(seed=int(cfg.seed), output_dir=output_dir, tracker=tracker, progress=cfg.progress)
        metrics = _stages(cfg, env, reward, optimizer, source, run, name)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        try:
            tracker.end(status)
        except Exception as err:  # never hide the error that ended the run
            log.error("could not close the tracking run: %s", err)
    return metrics


def _stages(cfg: DictConfig, env: Environment, reward: RewardModel, optimizer: Optimizer,
            source: PreferenceSource | None, run: RunContext, name: str) -> dict[str, float]:
    out, ckpt = run.output_dir, run.output_dir / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {}
    prefs = None
    if source is not None:
        log.info("stage 1/4: demonstrations and preferences (%s)", type(source).__name__)
        prefs = source.gather(env, run)
        if not all(isinstance(item, Trajectory) for item in prefs.demos):  # text: responses, no demonstrations
            metrics["preference/pairs"] = len(prefs.pairs)
            run.log(metrics, 0)
            log.info("%d responses, %d preference pairs", len(prefs.items), len(prefs.pairs))
        else:
            demo_returns = returns(prefs.demos)
            metrics["demos/best_true_return"] = float(np.max(demo_returns))
            metrics["demos/mean_true_return"] = float(np.mean(demo_returns))
            metrics["demos/count"] = len(demo_returns)
            metrics["preference/pairs"] = len(prefs.pairs)
            run.log(metrics, 0)
            save_demos(ckpt / "demos.npz", prefs.demos, prefs.scores if prefs.demonstrations is None else None)
            run.tracker.log_artifact(ckpt, "checkpoints")  # the demonstrations and any learner checkpoints
            log.info("%d demonstrations, true returns %.1f .. %.1f; %d items, %d preference pairs",
                     len(demo_returns), demo_returns.min(), demo_returns.max(), len(prefs.items), len(prefs.pairs))

    if reward.capabilities.needs_preferences:
        assert prefs is not None
        log.info("stage 2/4: learning the reward (%s)", type(reward).__name__)
        reward.fit(prefs, env, run)
        torch.save(reward.state_dict(), ckpt / "reward.pt")
        run.tracker.log_artifact(ckpt / "reward.pt", "checkpoints")

    log.info("stage 3/4: optimising the policy (%s)", type(optimizer).__name__)
    demos = prefs.best_first() if prefs is not None and optimizer.capabilities.needs_demonstrations else None
    online = None
    if source is not None and prefs is not None and reward.capabilities.needs_preferences:
        online = source.online_callback(prefs, reward, env, run)  # more preferences while the policy trains
    policy = optimizer.fit(env, reward, run, demonstrations=demos, callback=online)
    if online is not None:  # the reward was refit on the way
        torch.save(reward.state_dict(), ckpt / "reward.pt")
        run.tracker.log_artifact(ckpt / "reward.pt", "checkpoints")
    if isinstance(policy, torch.nn.Module):
        torch.save(policy.state_dict(), ckpt / "policy.pt")
        run.tracker.log_artifact(ckpt / "policy.pt", "checkpoints")

    log.info("stage 4/4: evaluating the policy on the true reward")
    final = env.evaluate(policy, reward, run, cfg.evaluation.episodes, seed=int(cfg.seed) + 10_000)
    if final is None:  # the task leaves it to rollouts of whole episodes
        final = _rollout_evaluation(cfg, env, reward, policy, prefs, metrics, run, name)
    steps = run.tracker.history["train/true_return"][-1][0] if run.tracker.history.get("train/true_return") else 0
    run.log(final, steps)
    learning_curve(out / "plots" / "learning_curve.png", run.tracker.history, metrics.get("demos/best_true_return"),
                   final["eval/true_return_mean"], name)
    run.tracker.log_artifact(out / "plots", "plots")
    metrics.update(final)
    for key in ("reward/val_pair_accuracy", "reward/return_correlation", "reward/step_offset",
                "preference/label_agreement", "preference/queries", "bc/true_return_mean"):
        if run.tracker.last(key) is not None:
            metrics[key] = run.tracker.last(key)  # type: ignore[assignment]
    summary = "  ".join(f"{k}={v:.3g}" for k, v in metrics.items())
    log.info("done: %s", summary)
    print(f"\n{name}: {summary}\noutputs: {out}")
    return metrics


def _rollout_evaluation(cfg: DictConfig, env: Environment, reward: RewardModel, policy: Policy,
                        prefs: Preferences | None, metrics: dict[str, float], run: RunContext,
                        name: str) -> dict[str, float]:
    """Stage 4 for tasks measured by episodes: the final metrics; plots and the video written."""
    out = run.output_dir
    log.info("evaluating %d episodes on the true reward", cfg.evaluation.episodes)
    demo_returns = returns(prefs.demos) if prefs is not None else np.zeros(0)
    cap = cfg.evaluation.get("max_steps")  # get: configs saved before the field existed
    trajs = rollout(policy, env, cfg.evaluation.episodes, seed=int(cfg.seed) + 10_000,
                    deterministic=cfg.evaluation.deterministic, desc="evaluation" if run.progress else None,
                    max_steps=cap)
    eval_returns = returns(trajs)
    final = {"eval/true_return_mean": float(eval_returns.mean()), "eval/true_return_std": float(eval_returns.std()),
             "eval/truncated_fraction": float(np.mean([not t.info["terminated"] for t in trajs]))}
    capped = sum(t.info["cut"] for t in trajs)
    if capped:
        log.warning("%d of %d evaluation episodes were cut at evaluation.max_steps=%d; their returns are partial",
                    capped, len(trajs), cap)
    if prefs is not None and np.isfinite(metrics["demos/best_true_return"]):  # unknown for rank-only files
        final["eval/beats_best_demo"] = float(final["eval/true_return_mean"] > metrics["demos/best_true_return"])
    bc_return = run.tracker.last("bc/true_return_mean")  # logged where a BC policy was trained on the way (D-REX)
    if bc_return is not None:
        final["eval/beats_bc"] = float(final["eval/true_return_mean"] > bc_return)
    if prefs is not None and not reward.uses_env_reward:
        demo_returns = returns(prefs.demos)  # again: an online source adds the rollouts it queried
        demo_learned, eval_learned = returns(prefs.demos, reward), returns(trajs, reward)
        final["eval/return_correlation"] = pearson(np.concatenate([demo_returns, eval_returns]),
                                                   np.concatenate([demo_learned, eval_learned]))
        reward_extrapolation(out / "plots" / "reward_extrapolation.png", demo_returns, demo_learned,
                             eval_returns, eval_learned, name)
    if cfg.video.enabled:
        video, note = record_episode(policy, env, out / "videos" / "policy.gif", seed=int(cfg.seed) + 30_000,
                                     max_steps=cfg.video.max_steps, fps=cfg.video.fps,
                                     deterministic=cfg.evaluation.deterministic)
        if video is not None:
            run.tracker.log_artifact(video, "videos")
        else:
            log.warning("no video of the policy: %s", note)
        run.tracker.set_tag("video", note if video is not None else f"skipped: {note}")
    return final


def hydra_context() -> dict:
    """run_pipeline's keyword arguments from Hydra: group choices, output folder and, in a
    multirun, the sweep folder and job number; the command line's overrides."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return {"choices": {g: str(hc.runtime.choices.get(g)) for g in (*GROUPS, "experiment")},
            "output_dir": Path(hc.runtime.output_dir),
            "sweep_dir": Path(hc.sweep.dir) if multirun else None,
            "job": int(hc.job.num) if multirun else None,
            "overrides": " ".join(hc.overrides.task)}
