"""The pipeline: check the config, build the recipe of stages (core/stages.py), run it, keep everything.

It names no concrete plugin: every part comes from the config's `_target_`s, and every check (typed
fields, known keys, plugins against the env, stages against each other, artifacts loaded from other runs
against the task) runs before any of them does work. Each finished stage saves its artifacts and the
run's state (checkpoints/run_state.pkl: finished stages, random states, metric history), so
`resume=PATH` goes on from the first unfinished stage, continuing its last checkpoint, in the same
tracking run. The tracking run is closed whatever happens: FINISHED, FAILED on an error, KILLED on
SIGTERM/SIGINT (core/signals.py), after which the way to resume is printed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shlex
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from core import signals
from core.artifacts import check_policy, check_reward, find_policy, find_reward, write_atomic
from core.compat import (
    CORE_KEYS,
    IncompatibleError,
    check_compatible,
    check_fields,
    check_nested,
    plugin_class,
    used_groups,
)
from core.devices import Devices, rank
from core.errors import NamedError
from core.follower import follow
from core.interfaces import Environment, EnvReward, Optimizer, PreferenceSource, RewardModel
from core.jsonl import set_max_line_bytes
from core.plots import learning_curve
from core.run import Checkpointing, RunContext, rng_state, set_rng_state
from core.runs import process_alive
from core.schema import NonNegativeInt, PositiveInt, check_config, interpolation_sources
from core.stages import (
    LANGUAGE_MODEL,
    POLICY,
    Artifacts,
    Evaluate,
    FitReward,
    Gather,
    Optimize,
    Settings,
    Stage,
    check_recipe,
)
from core.tracking import Tracker, flatten
from core.variants import CONF_DIR, Explicit, override_keys, preset_keys, resolve_variants

log = logging.getLogger(__name__)
GROUPS = ("env", "reward", "preference", "policy")
FILE_KEYS = {"path", "init", "prompts"}
FAULT_KEYS = {"lr", "learning_rate"} | FILE_KEYS
"""Config fields named when a stage's numbers go non-finite: learning rates and input files."""
STATE = "run_state.pkl"
# Keys (and key prefixes) a resumed run may change: where it runs (a preempted job may come back on other hardware)
# and how it talks to its tracking store (a resumed sweep job keeps its MLflow run, and so its parent).
IGNORED_ON_RESUME = ("resume", "progress", "checkpoint", "trainer", "tracking.parent_run_id", "tracking.http_timeout",
                     "tracking.http_retries", "tracking.lock_timeout")


# ---------------------------------------------------------------- the run's own settings (typed)
@dataclass
class EvaluationSettings:
    episodes: PositiveInt = 10
    deterministic: bool = False
    max_steps: PositiveInt | None = None


@dataclass
class VideoSettings:
    enabled: bool = True
    max_steps: PositiveInt = 1000
    fps: PositiveInt = 30


@dataclass
class CheckpointSettings:
    every: PositiveInt = 100


@dataclass
class DataSettings:
    max_line_bytes: PositiveInt = 1_000_000


@dataclass
class RunSettings:
    """The top-level keys of conf/config.yaml that are not plugins; documented there."""

    seed: NonNegativeInt = 0
    progress: bool = True
    resume: str | None = None
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    video: VideoSettings = field(default_factory=VideoSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    data: DataSettings = field(default_factory=DataSettings)
    recipe: dict = field(default_factory=dict)


@dataclass
class RunState:
    """What a resumed run needs besides the artifacts: the tracking run, the finished stages, the random
    states and metric history as of the last one, and who ran it (a RUNNING run whose process is gone)."""

    run_id: str | None
    finished: list[str] = field(default_factory=list)
    rng: dict[str, Any] = field(default_factory=rng_state)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)

    def save(self, folder: Path) -> None:
        write_atomic(folder / STATE, pickle.dumps(self))

    @staticmethod
    def load(folder: Path) -> RunState:
        with open(folder / STATE, "rb") as f:
            state = pickle.load(f)
        assert isinstance(state, RunState)
        return state


def finalize_config(cfg: DictConfig, choices: dict[str, str], overrides: Sequence[str]) -> DictConfig:
    """The composed config as the run uses it: the plugins' env and budget variants applied
    (core/variants.py), below the preset's and the command line's own settings."""
    direct = preset_keys(choices.get("experiment")) | override_keys(overrides)
    derived = {key for key, source in interpolation_sources(cfg).items()  # ppo.total_timesteps=N counts for
               if any(source == k or source.startswith(k + ".") for k in direct)}  # policy.total_timesteps
    return resolve_variants(cfg, choices["env"], choices.get("budget", "full"), Explicit(direct, derived))


def build(node: DictConfig) -> Any:
    """instantiate(node), with a named error a plugin raised (a bad combination of its fields) passed on as
    it is, not inside Hydra's InstantiationException."""
    try:
        return instantiate(node)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException):  # (a plugin nested in another: wrapped twice)
            cause = cause.__cause__
        if isinstance(cause, NamedError):
            raise cause from None
        raise


def plugin_node(cfg: DictConfig, key: str) -> DictConfig:
    """A plugin's node without the keys core reads itself (`init`), as instantiate gets it."""
    node = OmegaConf.select(cfg, key)
    assert isinstance(node, DictConfig)
    out = node.copy()
    with open_dict(out):
        for k in CORE_KEYS:
            out.pop(k, None)
    return out


def _suspects(cfg: DictConfig, own: Sequence[str], inputs: Sequence[str]) -> tuple[str, ...]:
    """`key=value` of the learning rates and input files under the stage's own config nodes `own`, and of the
    input files under `inputs` (the nodes whose data it takes), named as a user sets them (`ppo.learning_rate`,
    not `policy.hparams.learning_rate`)."""
    hints, out = interpolation_sources(cfg), []

    def walk(node: Any, prefix: str, keys: set[str]) -> None:
        for k, v in node.items():
            key = f"{prefix}.{k}"
            if isinstance(v, dict):
                walk(v, key, keys)
            elif k in keys and v is not None:
                out.append(f"{hints.get(key, key)}={v}")

    for roots, keys in ((own, FAULT_KEYS), (inputs, FILE_KEYS)):
        for root in roots:
            node = OmegaConf.select(cfg, root)
            if isinstance(node, DictConfig):
                walk(OmegaConf.to_container(node, resolve=True), root, keys)
    return tuple(dict.fromkeys(out))


def _check_preset(choices: dict[str, str]) -> None:
    preset = choices.get("experiment")
    if preset not in (None, "None", "null") and not (CONF_DIR / "experiment" / f"{preset}.yaml").exists():
        known = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
        raise IncompatibleError(f"experiment={preset}: no such preset (conf/experiment/{preset}.yaml); "
                                f"the presets are {', '.join(known)}")


def _locate(spec: str, tracker: Tracker, key: str) -> Path:
    """A run's output folder (or an artifact) from `spec`: a path, or runs:/<id> through the tracker."""
    if spec.startswith("runs:/"):
        return tracker.locate(spec.removeprefix("runs:/").strip("/"))
    path = Path(spec).expanduser().resolve()
    if not (path.exists() or path.with_name(path.name + ".yaml").exists()):  # (a control policy: <path>.pt/.yaml)
        raise FileNotFoundError(f"{key}={spec}: no such folder or file")
    return path


def _config_differences(saved: DictConfig, now: DictConfig) -> list[str]:
    def flat(c: DictConfig) -> dict[str, Any]:
        return {k: v for k, v in flatten(c).items()
                if not any(k == key or k.startswith(f"{key}.") for key in IGNORED_ON_RESUME)}

    a, b = flat(saved), flat(now)
    return [f"{k}: {a.get(k, '(unset)')} in the run, {b.get(k, '(unset)')} now" for k in sorted(set(a) | set(b))
            if a.get(k, "(unset)") != b.get(k, "(unset)")]


def run_pipeline(cfg: DictConfig, choices: dict[str, str], output_dir: Path, sweep_dir: Path | None = None,
                 job: int | None = None, overrides: Sequence[str] = ()) -> dict[str, float]:
    """Run every stage the config asks for (or, with resume=PATH, those a stopped run left); returns the
    final metrics.

    choices: the option picked in each config group (for names, tags and messages). sweep_dir, job: a
    multirun job's sweep folder (None outside a multirun: a job whose own folder holds a run already is a
    requeued one, which continues it) and its number (added to the run name). overrides: the command line's
    overrides (a tag, and the resume command).
    """
    overrides = list(overrides)
    _check_preset(choices)
    cfg = finalize_config(cfg, choices, overrides)
    classes = {g: plugin_class(cfg[g]) for g in GROUPS if g != "env"}
    policy_init, reward_init = cfg.policy.get("init"), cfg.reward.get("init")
    used = used_groups(classes, reward_loaded=bool(reward_init))
    source_used, reward_used = "preference" in used, "reward" in used
    check_config(cfg, [*used, "trainer", *(f"recipe.{k}" for k in cfg.recipe)], RunSettings)
    check_fields(cfg, choices, (*used, "trainer", *(f"recipe.{k}" for k in cfg.recipe)))
    devices: Devices = build(cfg.trainer)
    if devices.distributed and job is not None and "SLURM_NTASKS" not in os.environ:
        raise IncompatibleError(f"trainer={choices.get('trainer')} in a multirun: Lightning starts a data-parallel "
                                f"run's other processes by running the command line again, which would start the "
                                f"whole sweep again; run each job alone (without -m)")
    tracker: Tracker = build(cfg.tracking)

    # A sweep's job whose folder holds a run already is a requeued one (submitit, after a preemption): it goes on.
    requeued = cfg.get("resume") is None and sweep_dir is not None and (output_dir / "checkpoints" / STATE).is_file()
    resuming = cfg.get("resume") is not None or requeued
    if resuming:
        if requeued:
            log.info("%s holds this job's run from before (a requeued job): it continues", output_dir)
        else:
            output_dir = _locate(str(cfg.resume), tracker, "resume")
        what = f"resume={cfg.resume}" if not requeued else f"the requeued job in {output_dir}"
        if not (output_dir / "checkpoints" / STATE).is_file():
            raise FileNotFoundError(f"{what}: {output_dir} holds no run state (checkpoints/{STATE}); "
                                    f"it is not the output folder of a rexlab run")
        differences = _config_differences(OmegaConf.load(output_dir / "config.yaml"), cfg)  # type: ignore[arg-type]
        if differences:
            raise IncompatibleError(f"{what}: the config differs from the run's (config.yaml), so it "
                                    f"cannot continue it; use the run's overrides. Differences:\n  "
                                    + "\n  ".join(differences))

    set_max_line_bytes(cfg.data.max_line_bytes)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    for seeded in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # else a data-parallel fit's setup seeds everything again
        os.environ.pop(seeded, None)
    if not devices.on_cpu:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
    torch.use_deterministic_algorithms(True, warn_only=not devices.on_cpu)
    env: Environment = build(cfg.env)
    devices.apply_threads(env.observation_kind)
    text = env.observation_kind == "text"
    check_compatible(env, choices, classes, used)
    check_nested(cfg, env, choices, (*used[1:], *(f"recipe.{k}" for k in cfg.recipe)))

    init_tags: dict[str, str] = {}
    given: set[str] = set()
    start_policy = None
    if policy_init:
        start_policy = find_policy(_locate(str(policy_init), tracker, "policy.init"))
        check_policy(start_policy, env, f"policy.init={policy_init}")
        init_tags["init.policy"] = f"{policy_init} ({start_policy.path})"
        given.add(LANGUAGE_MODEL if text else POLICY)
    reward_folder = None
    if reward_init and reward_used:
        if classes["reward"].uses_env_reward:
            raise IncompatibleError(f"reward.init={reward_init}: reward={choices['reward']} learns nothing to load")
        reward_folder = find_reward(_locate(str(reward_init), tracker, "reward.init"))
        init_tags["init.reward"] = f"{reward_init} ({reward_folder})"

    reward: RewardModel = build(plugin_node(cfg, "reward")) if reward_used else EnvReward()
    optimizer: Optimizer = build(plugin_node(cfg, "policy"))
    source: PreferenceSource | None = build(cfg.preference) if source_used else None
    stages: list[Stage] = []
    if not policy_init:  # the recipe's own stages make the model the policy starts from
        for name in cfg.recipe:
            part = build(cfg.recipe[name])
            if not isinstance(part, Optimizer):
                raise IncompatibleError(f"recipe.{name} builds a {type(part).__name__}; a recipe stage is an "
                                        f"optimizer (conf/policy/*.yaml), e.g. `- /policy/sft@recipe.sft`")
            stages.append(Optimize(part, str(name), text, uses_reward=False))
    learned = reward_used and classes["reward"].capabilities.needs_preferences
    if source is not None:
        stages.append(Gather(source))
    if learned:
        stages.append(FitReward(reward, cfg.reward._target_, reward_folder, str(reward_init)))
    online = source if source is not None and type(source).capabilities.queries_online else None
    stages.append(Optimize(optimizer, "policy", text, uses_reward=learned, online=online,
                           reward_target=cfg.reward._target_))
    stages.append(Evaluate(text))
    names = [stage.name for stage in stages]
    if len(set(names)) < len(names):
        raise IncompatibleError(f"recipe {' -> '.join(names)}: stage names must differ (they name the stages' "
                                f"artifacts); rename the recipe.<name> that repeats one")
    check_recipe(stages, given)
    if reward_folder is not None:  # before any work: the loaded model must fit this reward option and task
        check_reward(reward_folder, env, cfg.reward._target_, f"reward.init={reward_init}")

    name = "-".join(f"{choices[g]}" for g in GROUPS if g in used) + f"-s{cfg.seed}"
    if job is not None:
        name += f"-job{job}"
    settings = Settings(env, output_dir / "checkpoints", cfg.evaluation.episodes, cfg.evaluation.deterministic,
                        cfg.evaluation.get("max_steps"), cfg.video.enabled, cfg.video.max_steps, cfg.video.fps, name)
    roots = {"preferences": ("preference",), "reward": ("reward",), "policy": ("policy",), "evaluation": ()}
    inputs = {"reward": ("preference", "env"), "policy": ("reward", "env")}
    settings.suspects = {stage.name: _suspects(cfg, roots.get(stage.name, (f"recipe.{stage.name}",)),
                                               inputs.get(stage.name, ("env",))) for stage in stages}
    artifacts = Artifacts(reward=reward, policy=start_policy)

    def context(stage: Stage, s: Settings) -> RunContext:
        resume_file = settings.checkpoints / "resume" / f"{stage.name}.ckpt"  # (a follower's too: rank 0's)
        return RunContext(seed=int(cfg.seed), output_dir=s.checkpoints.parent, tracker=tracker, progress=cfg.progress,
                          checkpoint=Checkpointing(resume_file, int(cfg.checkpoint.every), resume=resuming),
                          stage=stage.name, suspects=settings.suspects.get(stage.name, ()), name=name,
                          devices=devices, data_parallel=stage.data_parallel)

    if rank() > 0:  # a follower of a data-parallel run: the data-parallel stages' fits with rank 0, nothing else
        return follow(stages, settings, artifacts, context, lambda: RunState.load(settings.checkpoints))
    return _run(cfg, stages, settings, tracker, artifacts, context, choices, name, overrides, init_tags, resuming)


def _run(cfg: DictConfig, stages: list[Stage], s: Settings, tracker: Tracker, artifacts: Artifacts,
         context: Callable[[Stage, Settings], RunContext], choices: dict[str, str], name: str,
         overrides: list[str], init_tags: dict[str, str], resuming: bool) -> dict[str, float]:
    output_dir = s.checkpoints.parent
    s.checkpoints.mkdir(parents=True, exist_ok=True)
    tags = ({f"choice.{g}": choices[g] for g in GROUPS} | ({"overrides": " ".join(overrides)} if overrides else {})
            | {"rexlab.output_dir": str(output_dir.resolve()), "rexlab.pid": str(os.getpid()),
               "rexlab.host": socket.gethostname()} | init_tags)
    if resuming:
        state = RunState.load(s.checkpoints)
        _check_not_running(state)
        if tracker.resume(state.run_id) == "RUNNING":
            log.warning("the run was left RUNNING by process %d on %s, which is gone without closing it (killed, "
                        "e.g. kill -9, out of memory, a lost machine); it continues now", state.pid, state.host)
        for tag, value in tags.items():
            if tag.startswith("rexlab."):
                tracker.set_tag(tag, value)
        state.pid, state.host = os.getpid(), socket.gethostname()
    else:
        state = RunState(tracker.start(name, cfg, tags))
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
        tracker.log_artifact(output_dir / "config.yaml")
    state.save(s.checkpoints)
    log.info("recipe: %s", " -> ".join(stage.name for stage in stages))
    status, current = "FAILED", ""
    restore = resuming  # the random states and history as of the last finished stage, once its artifacts are loaded
    try:
        with signals.installed():
            for k, stage in enumerate(stages):
                current = stage.name
                if stage.name in state.finished:
                    log.info("stage %d/%d: %s, finished before: loading its artifacts", k + 1, len(stages), stage.name)
                    stage.load(artifacts, s)
                    continue
                if restore:
                    set_rng_state(state.rng)
                    tracker.restore_history(state.history)
                    restore = False
                log.info("stage %d/%d: %s (%s)", k + 1, len(stages), stage.name, stage.describe())
                run = context(stage, s)
                stage.run(artifacts, s, run)
                state.finished.append(stage.name)
                state.rng, state.history = rng_state(), {key: list(v) for key, v in tracker.history.items()}
                state.save(s.checkpoints)
                assert run.checkpoint is not None
                run.checkpoint.path.unlink(missing_ok=True)
            if restore:  # every stage had finished before
                tracker.restore_history(state.history)
            if (s.checkpoints / "resume").is_dir() and not any((s.checkpoints / "resume").iterdir()):
                (s.checkpoints / "resume").rmdir()
            metrics = _summary(artifacts, tracker, s, name)
        status = "FINISHED"
        return metrics
    except (signals.Interrupted, SIGTERMException) as err:  # (Lightning's own SIGTERM exit, from its validation loop)
        status = "KILLED"
        stop = err if isinstance(err, signals.Interrupted) else signals.Interrupted(signal.SIGTERM)
        again = " ".join(shlex.quote(o.replace("'true'", "true").replace("'false'", "false"))  # as typed
                         for o in overrides if not o.startswith("resume="))
        print(f"\n{name}: stopped by {stop.name} in stage '{current}'; what it finished is saved in {output_dir}. "
              f"Resume with: python main.py {again} resume={shlex.quote(str(output_dir))}", flush=True)
        raise stop from None
    except Exception as err:
        with contextlib.suppress(Exception):  # the tracker may be what failed
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            tracker.set_tag("error", f"{type(err).__name__} in stage '{current}': {first}"[:5000])
        raise
    finally:
        try:
            tracker.end(status)
        except Exception as err:  # never hide the error that ended the run
            log.error("could not close the tracking run: %s", err)


def _check_not_running(state: RunState) -> None:
    """Refuse to resume a run another rexlab process on this host is still driving."""
    if state.pid == os.getpid() or not process_alive(state.pid, state.host):
        return
    try:
        command = Path(f"/proc/{state.pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        command = "main.py"
    if "main.py" in command:  # (not a process that reused the number)
        raise RuntimeError(f"resume: the run is still being driven by process {state.pid} on this host; stop it "
                           f"first (kill -TERM {state.pid} checkpoints it)")


def _summary(a: Artifacts, tracker: Tracker, s: Settings, name: str) -> dict[str, float]:
    """The final metrics (returned, printed, and the learning-curve plot's), from the stages' results and
    the history of what was logged."""
    metrics: dict[str, float] = {}
    for key in ("demos/best_true_return", "demos/mean_true_return", "demos/count", "preference/pairs",
                "reward/val_pair_accuracy", "reward/return_correlation", "reward/step_offset",
                "preference/label_agreement", "preference/queries", "bc/true_return_mean"):
        if tracker.last(key) is not None:
            metrics[key] = tracker.last(key)  # type: ignore[assignment]
    metrics.update(a.evaluation or {})
    out = s.checkpoints.parent
    learning_curve(out / "plots" / "learning_curve.png", tracker.history, metrics.get("demos/best_true_return"),
                   metrics.get("eval/true_return_mean"), name)
    tracker.log_artifact(out / "plots", "plots")
    summary = "  ".join(f"{k}={v:.3g}" for k, v in metrics.items())
    log.info("%s done: %s\noutputs: %s", name, summary, out)
    return metrics


def hydra_context() -> dict:
    """run_pipeline's keyword arguments from Hydra: group choices, output folder and, in a
    multirun, the sweep folder and job number; the command line's overrides."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return {"choices": {g: str(hc.runtime.choices.get(g)) for g in (*GROUPS, "experiment", "budget", "trainer")},
            "output_dir": Path(hc.runtime.output_dir),
            "sweep_dir": Path(hc.sweep.dir) if multirun else None,
            "job": int(hc.job.num) if multirun else None,
            "overrides": list(hc.overrides.task)}
