"""Stages over artifacts: a run is a recipe, a list of stages, each consuming the artifacts earlier stages
made and producing its own (core/artifacts.py says how each is saved and loaded).

    Gather(source)         -> preferences (+ demonstrations, from sources that provide them)
    FitReward(reward)      preferences (+ demonstrations for D-REX) -> reward model
    Optimize(optimizer)    [reward model] [demonstrations] [preferences, for DPO] [the latest policy] -> control policy
                           or language model
    Evaluate()             policy [reward model] -> evaluation

The default recipe follows the config groups (preference -> reward -> policy -> evaluation); `recipe:`
in a preset puts stages of its own before them (experiment=chatgpt_recipe: pretrain -> sft). Each stage
hands its results to the next through `Artifacts` (return values, never the tracker) and saves them, so
that a resumed run loads what finished stages made instead of redoing them. `check_recipe` matches
producers to consumers before anything runs.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.artifacts import (
    best_demo_return,
    load_evaluation,
    load_policy,
    load_preferences,
    load_reward,
    save_evaluation,
    save_policy,
    save_preferences,
    save_reward,
)
from core.compat import IncompatibleError
from core.evaluation import pearson, returns, rollout
from core.interfaces import Environment, EnvReward, Optimizer, Policy, PreferenceSource, RewardModel, SavedPolicy
from core.plots import reward_extrapolation
from core.run import RunContext
from core.types import Preferences, Trajectory
from core.video import record_episode

log = logging.getLogger(__name__)

DEMONSTRATIONS, PREFERENCES, REWARD = "demonstrations", "preferences", "reward model"
POLICY, LANGUAGE_MODEL, EVALUATION = "control policy", "language model", "evaluation"


@dataclass
class Artifacts:
    """What the stages made so far. policy: the latest saved policy (the next optimizer starts from it);
    trained: the last optimizer's policy in memory (the evaluation's, when the same process made it)."""

    preferences: Preferences | None = None
    reward: RewardModel = field(default_factory=EnvReward)
    policy: SavedPolicy | None = None
    trained: Policy | None = None
    evaluation: dict[str, float] | None = None


@dataclass
class Settings:
    """What every stage reads besides its plugin: the task, where artifacts go, the evaluation settings."""

    env: Environment
    checkpoints: Path
    episodes: int = 10
    deterministic: bool = False
    max_steps: int | None = None
    video: bool = True
    video_steps: int = 1000
    fps: int = 30
    name: str = "run"
    suspects: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Each stage's config keys most likely at fault when its numbers go non-finite."""


class Stage(ABC):
    """name: the stage's name (its artifacts' and checkpoint's); consumes / produces: artifact kinds;
    data_parallel: its work is a fit that every process of a data-parallel run takes part in (trainer=ddp)."""

    name: str
    consumes: tuple[str, ...] = ()
    produces: tuple[str, ...] = ()
    data_parallel: bool = False

    @abstractmethod
    def describe(self) -> str:
        """What runs, for the log (e.g. "reward model: TREX")."""

    @abstractmethod
    def run(self, a: Artifacts, s: Settings, run: RunContext) -> None:
        """Do the stage's work, save its artifacts and put them into `a`."""

    @abstractmethod
    def load(self, a: Artifacts, s: Settings) -> None:
        """Put into `a` what a finished run of this stage saved (a resumed run skips the work)."""


class Gather(Stage):
    """Demonstrations and preferences from a PreferenceSource (text: over responses of the latest model)."""

    name = "preferences"

    def __init__(self, source: PreferenceSource) -> None:
        self.source = source
        caps = type(source).capabilities
        self.produces = (PREFERENCES,) + ((DEMONSTRATIONS,) if caps.provides_demonstrations else ())

    def describe(self) -> str:
        return f"demonstrations and preferences: {type(self.source).__name__}"

    def run(self, a: Artifacts, s: Settings, run: RunContext) -> None:
        prefs = self.source.gather(s.env, run, a.policy)
        metrics: dict[str, float] = {"preference/pairs": len(prefs.pairs)}
        best = best_demo_return(prefs)
        if prefs.demos and isinstance(prefs.demos[0], Trajectory):
            demo_returns = returns(prefs.demos)
            metrics |= {"demos/mean_true_return": float(np.mean(demo_returns)), "demos/count": len(demo_returns)}
            if best is not None:
                metrics["demos/best_true_return"] = best
            log.info("%d demonstrations, true returns %.1f .. %.1f; %d items, %d preference pairs",
                     len(demo_returns), demo_returns.min(), demo_returns.max(), len(prefs.items), len(prefs.pairs))
        else:
            distinct = len({(r.prompt, r.text) for r in prefs.items})
            log.info("%d preference pairs over %d distinct responses", len(prefs.pairs), distinct)
        run.log(metrics, 0)
        save_preferences(prefs, s.checkpoints, self.source.state_dict())
        for shown, where in (("demos.npz", "checkpoints"), ("preferences.jsonl", "checkpoints"),
                             ("learner", "checkpoints/learner")):  # for people; preferences.pkl stays local
            if (s.checkpoints / shown).exists():
                run.tracker.log_checkpoint(s.checkpoints / shown, where)
        a.preferences = prefs

    def load(self, a: Artifacts, s: Settings) -> None:
        a.preferences, state = load_preferences(s.checkpoints)
        self.source.load_state_dict(state)


class FitReward(Stage):
    """A reward model learned from the preferences (or, with reward.init, loaded from another run)."""

    name = "reward"
    produces = (REWARD,)

    def __init__(self, reward: RewardModel, target: str, init: Path | None = None, init_name: str = "") -> None:
        self.reward, self.target, self.init, self.init_name = reward, target, init, init_name
        caps = type(reward).capabilities
        self.data_parallel = caps.data_parallel and init is None
        self.consumes = () if init is not None else (PREFERENCES,) + ((DEMONSTRATIONS,) if caps.needs_demonstrations
                                                                      else ())

    def describe(self) -> str:
        return (f"reward model: {type(self.reward).__name__}" if self.init is None
                else f"reward model: {type(self.reward).__name__} loaded from {self.init_name}")

    def run(self, a: Artifacts, s: Settings, run: RunContext) -> None:
        if self.init is not None:
            load_reward(self.reward, self.init, s.env, self.target, f"reward.init={self.init_name}")
        else:
            assert a.preferences is not None
            self.reward.fit(a.preferences, s.env, run)
        save_reward(self.reward, s.checkpoints / "reward", s.env, self.target)
        run.tracker.log_checkpoint(s.checkpoints / "reward", "checkpoints/reward")
        a.reward = self.reward

    def load(self, a: Artifacts, s: Settings) -> None:
        self.reward.load(s.checkpoints / "reward")
        a.reward = self.reward


class Optimize(Stage):
    """An optimizer's policy, from the latest policy where there is one (a recipe's earlier stage or
    policy.init); with an online source, more preferences arrive (and the reward is refit) as it trains."""

    def __init__(self, optimizer: Optimizer, name: str, text: bool, uses_reward: bool,
                 online: PreferenceSource | None = None, reward_target: str = "") -> None:
        self.optimizer, self.name, self.online, self.reward_target = optimizer, name, online, reward_target
        caps = type(optimizer).capabilities
        self.data_parallel = caps.data_parallel and online is None
        self.consumes = (((DEMONSTRATIONS,) if caps.needs_demonstrations else ()) + ((REWARD,) if uses_reward else ())
                         + ((PREFERENCES,) if caps.needs_preferences else ()))
        self.produces = (LANGUAGE_MODEL if text else POLICY,)

    def describe(self) -> str:
        return f"policy: {type(self.optimizer).__name__}"

    def run(self, a: Artifacts, s: Settings, run: RunContext) -> None:
        demos = (a.preferences.best_first() if a.preferences is not None
                 and type(self.optimizer).capabilities.needs_demonstrations else None)
        callback = (self.online.online_callback(a.preferences, a.reward, s.env, run)
                    if self.online is not None and a.preferences is not None else None)
        prefs = a.preferences if type(self.optimizer).capabilities.needs_preferences else None
        policy = self.optimizer.fit(s.env, a.reward, run, demonstrations=demos, callback=callback, init=a.policy,
                                    preferences=prefs)
        a.trained, a.policy = policy, save_policy(policy, s.checkpoints / self.name, s.env)
        if callback is not None:  # the labels asked while it trained, and the reward refit on them
            assert self.online is not None and a.preferences is not None
            save_preferences(a.preferences, s.checkpoints / "online", self.online.state_dict())
            save_reward(a.reward, s.checkpoints / "reward", s.env, self.reward_target)
        saved = s.checkpoints / self.name
        if saved.is_dir():  # a language model's folder
            run.tracker.log_checkpoint(saved, f"checkpoints/{self.name}")
        else:
            for suffix in (".pt", ".yaml"):
                run.tracker.log_checkpoint(saved.parent / f"{saved.name}{suffix}", "checkpoints")

    def load(self, a: Artifacts, s: Settings) -> None:
        a.trained, a.policy = None, SavedPolicy(s.checkpoints / self.name)
        if self.online is not None:
            a.preferences, state = load_preferences(s.checkpoints / "online")
            self.online.load_state_dict(state)
            a.reward.load(s.checkpoints / "reward")


class Evaluate(Stage):
    """The final policy on the true reward: the task's own evaluation (text), else episodes of it, with the
    reward-extrapolation plot, the video and the comparison to the demonstrations and baselines."""

    name = "evaluation"
    consumes = (POLICY,)
    produces = (EVALUATION,)

    def __init__(self, text: bool) -> None:
        if text:
            self.consumes = (LANGUAGE_MODEL,)

    def describe(self) -> str:
        return "evaluating the policy on the true reward"

    def run(self, a: Artifacts, s: Settings, run: RunContext) -> None:
        assert a.policy is not None
        policy = a.trained if a.trained is not None else load_policy(a.policy, s.env)
        seed = run.seed + 10_000
        final = s.env.evaluate(policy, a.reward, run, s.episodes, seed=seed)
        if final is None:
            final = self.episodes(policy, a, s, run)
        steps = run.tracker.history["train/true_return"][-1][0] if run.tracker.history.get("train/true_return") else 0
        run.log(final, steps)
        save_evaluation(final, s.checkpoints)
        a.evaluation = final

    def episodes(self, policy: Policy, a: Artifacts, s: Settings, run: RunContext) -> dict[str, float]:
        env, prefs, out = s.env, a.preferences, run.output_dir
        log.info("evaluating %d episodes on the true reward", s.episodes)
        trajs = rollout(policy, env, s.episodes, seed=run.seed + 10_000, deterministic=s.deterministic,
                        desc="evaluation" if run.progress else None, max_steps=s.max_steps)
        eval_returns = returns(trajs)
        final = {"eval/true_return_mean": float(eval_returns.mean()), "eval/true_return_std": float(eval_returns.std()),
                 "eval/truncated_fraction": float(np.mean([not t.info["terminated"] for t in trajs]))}
        capped = sum(t.info["cut"] for t in trajs)
        if capped:
            log.warning("%d of %d evaluation episodes were cut at evaluation.max_steps=%d; their returns are partial",
                        capped, len(trajs), s.max_steps)
        best = best_demo_return(prefs) if prefs is not None else None
        if best is not None:  # unknown for rank-only files
            final["eval/beats_best_demo"] = float(final["eval/true_return_mean"] > best)
        baselines = (prefs.baselines if prefs is not None else {}) | a.reward.baselines
        for baseline, value in baselines.items():
            final[f"eval/beats_{baseline}"] = float(final["eval/true_return_mean"] > value)
        if prefs is not None and not a.reward.uses_env_reward:
            demo_returns = returns(prefs.demos)
            demo_learned, eval_learned = returns(prefs.demos, a.reward), returns(trajs, a.reward)
            final["eval/return_correlation"] = pearson(np.concatenate([demo_returns, eval_returns]),
                                                       np.concatenate([demo_learned, eval_learned]))
            reward_extrapolation(out / "plots" / "reward_extrapolation.png", demo_returns, demo_learned,
                                 eval_returns, eval_learned, s.name)
        if s.video:
            video, note = record_episode(policy, env, out / "videos" / "policy.gif", seed=run.seed + 30_000,
                                         max_steps=s.video_steps, fps=s.fps, deterministic=s.deterministic)
            if video is not None:
                run.tracker.log_artifact(video, "videos")
            else:
                log.warning("no video of the policy: %s", note)
            run.tracker.set_tag("video", note if video is not None else f"skipped: {note}")
        return final

    def load(self, a: Artifacts, s: Settings) -> None:
        a.evaluation = load_evaluation(s.checkpoints)


def check_recipe(stages: list[Stage], given: set[str]) -> None:
    """Every stage's inputs are made by a stage before it (or `given`: artifacts loaded from another run);
    raises IncompatibleError naming the stage, what it lacks and which stage kinds make it."""
    available = set(given)
    for k, stage in enumerate(stages):
        missing = [kind for kind in stage.consumes if kind not in available]
        if missing:
            order = " -> ".join(s.name for s in stages)
            raise IncompatibleError(
                f"recipe {order}: stage {k + 1} '{stage.name}' ({stage.describe()}) needs {', '.join(missing)}, "
                f"which no stage before it makes. Demonstrations come from a preference source that provides them "
                f"(preference=learner_checkpoints, ranked_demos, noise_injection), preferences from a preference "
                f"stage, a reward model from a learned reward (or reward.init=PATH), a policy from an optimizer (or "
                f"policy.init=PATH).")
        available |= set(stage.produces)
