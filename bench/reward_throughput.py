"""T-REX reward fitting, snippet pairs/s: rexlab's reward stage next to a plain PyTorch loop of the same
computation (the limit), in one process, with the same torch threads, for each env family's defaults.

    OMP_NUM_THREADS=1 .venv/bin/python bench/reward_throughput.py            # about 4 minutes on one core
    .venv/bin/python bench/reward_throughput.py --only cartpole --pairs 2000 --threads 2

For each of env=cartpole, env=hopper and env=atari, `reward=trex` is composed from the real Hydra config
(as `python main.py env=<name>` gets it, the env's variant included): the config's 6000 training pairs per
member on the vector envs, `--atari-pairs` (x the variant's 5 epochs) on Atari. Ranked trajectories of random
observations of the env's shape stand in for demonstrations (the computation does not depend on the values):

- rexlab: `TREX.fit(prefs, env, run)` as the reward stage runs it (Lightning's loop, its validations of the
  held-out pairs, its checkpoints every `checkpoint.every` steps, the standardisation and the step-offset fit;
  no tracker and no progress bar), wall time from the call to its return: pairs per member trained / s;
- plain loop: the same computation in a bare `for` loop: the same ensemble (`reward_ensemble`), snippet pairs
  (drawn by `sample_snippet_pairs` and cut by `SnippetPairs`), batch size and loss
  (`ranking_loss(snippet_returns(...))`) stepped by Adam, the held-out pairs evaluated as often as the stage
  validates, and one pass over every demonstration state at the end (the stage's standardisation). No
  Lightning, logging, checkpoints or metrics: the fastest this computation runs here, so the ratio is the
  stage's overhead alone.

The ratio rexlab / plain is the stage's efficiency; it should stay >= 0.8 (`--min-ratio`: exit 1 below
it). Each side runs `--repeats` times alternately and its best time counts (the least disturbed by other
jobs).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.cli import compose_run  # noqa: E402
from core.devices import Devices, available_cores  # noqa: E402
from core.pipeline import build, plugin_node  # noqa: E402
from core.run import Checkpointing, RunContext  # noqa: E402
from core.tracking import NullTracker  # noqa: E402
from core.types import Preferences, Trajectory  # noqa: E402
from plugins.rewards.nets import ensemble_rewards, reward_ensemble  # noqa: E402
from plugins.rewards.trex import TREX, SnippetPairs, ranking_loss, sample_snippet_pairs, snippet_returns  # noqa: E402

ENVS = ("cartpole", "hopper", "atari")
DEMOS, DEMO_STEPS = 12, 300  # ranked trajectories of random observations, 300-599 steps each


def demonstrations(shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator) -> Preferences:
    """DEMOS trajectories of random observations, ranked by index (the last is best)."""
    trajs = []
    for k in range(DEMOS):
        steps = DEMO_STEPS + int(rng.integers(DEMO_STEPS))
        obs = (rng.integers(0, 256, (steps, *shape), dtype=np.uint8) if dtype == np.uint8
               else rng.standard_normal((steps, *shape)).astype(np.float32))
        trajs.append(Trajectory(obs, np.zeros(steps, np.int64), np.full(steps, k / steps, np.float32)))
    return Preferences.from_ranking(trajs, np.arange(DEMOS, dtype=np.float64))


def stage(reward: TREX, prefs: Preferences, env: object, tmp: Path, every: int) -> float:
    """Seconds of the reward stage's fit, checkpointing every `every` steps."""
    L.seed_everything(0, verbose=False)
    (tmp / "reward.ckpt").unlink(missing_ok=True)
    run = RunContext(seed=0, output_dir=tmp, tracker=NullTracker(), progress=False, stage="reward",
                     checkpoint=Checkpointing(tmp / "reward.ckpt", every))
    start = time.perf_counter()
    reward.fit(prefs, env, run)  # type: ignore[arg-type]
    return time.perf_counter() - start


def plain(reward: TREX, prefs: Preferences) -> float:
    """Seconds of the same computation in a bare loop: the same nets, snippet pairs, batch, loss and Adam steps,
    the same number of passes over as many held-out pairs (batches of 64, as the stage's), and one pass over
    every demonstration state at the end (the stage's standardisation)."""
    start = time.perf_counter()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    shape = tuple(prefs.items[0].obs.shape[1:])
    net = reward_ensemble(reward.ensemble_size, shape, reward.hidden_sizes, reward.activation, None)
    obs = [torch.as_tensor(t.obs).reshape(len(t), -1) for t in prefs.items]
    members, n_val = reward.ensemble_size, max(1, int(round(reward.num_pairs * reward.val_fraction)))
    specs = np.stack([sample_snippet_pairs(prefs, reward.num_pairs, reward.min_len, reward.max_len, rng)
                      for _ in range(members)])
    held_out = np.repeat(sample_snippet_pairs(prefs, n_val, reward.min_len, reward.max_len, rng)[None], members, 0)
    longest = int(max(specs[..., 4].max(), held_out[..., 4].max()))
    data, val = SnippetPairs(obs, specs, longest, reward.frame_stride), SnippetPairs(obs, held_out, longest,
                                                                                     reward.frame_stride)
    optimizer = torch.optim.Adam(net.parameters(), lr=reward.lr, weight_decay=reward.weight_decay)
    batch = reward.batch_size
    steps_per_epoch = math.ceil(len(data) / batch)
    every = max(1, steps_per_epoch // reward.val_checks)

    def batches(dataset: SnippetPairs, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for first in range(0, len(dataset), size):
            items = [dataset[k] for k in range(first, min(first + size, len(dataset)))]
            yield torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items])

    for _ in range(reward.epochs):
        for step, (x, mask) in enumerate(batches(data, batch), 1):
            loss = ranking_loss(snippet_returns(net, x, mask))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % every == 0:
                with torch.no_grad():
                    for vx, vmask in batches(val, 64):
                        returns = snippet_returns(net, vx, vmask)
                        (returns[..., 0] > returns[..., 1]).float().mean(0)
    ensemble_rewards(net, torch.cat(obs))
    return time.perf_counter() - start


def measure(name: str, pairs: int, repeats: int, tmp: Path) -> tuple[str, float, float, str]:
    cfg = compose_run(f"env={name}", "reward=trex", *([f"reward.num_pairs={pairs}"] if pairs else []))[0]
    env = build(cfg.env)
    node = plugin_node(cfg, "reward")
    probe = build(node)
    space = env.observation_space
    prefs = demonstrations(tuple(space.shape), np.dtype(space.dtype), np.random.default_rng(0))
    ours, theirs = math.inf, math.inf
    for _ in range(repeats):
        ours = min(ours, stage(build(node), prefs, env, tmp, int(cfg.checkpoint.every)))
        theirs = min(theirs, plain(probe, prefs))
    trained = probe.num_pairs * probe.epochs
    layers = "CNN" if len(space.shape) == 3 else "x".join(str(h) for h in probe.hidden_sizes)
    what = (f"{name}: {probe.ensemble_size} net(s) {layers}, batch {probe.batch_size}, {trained} pairs of "
            f"{probe.min_len}-{probe.max_len} steps (stride {probe.frame_stride})")
    return what, trained / ours, trained / theirs, f"{ours:.1f} s / {theirs:.1f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated envs among {', '.join(ENVS)}")
    parser.add_argument("--pairs", type=int, help="training pairs per member of the vector envs (default: the "
                        "config's, 6000)")
    parser.add_argument("--atari-pairs", type=int, default=200, help="training pairs per epoch on Atari (its "
                        "config's 6000 x 5 epochs would take an hour here)")
    parser.add_argument("--repeats", type=int, default=2, help="alternate runs of each side; the best counts")
    parser.add_argument("--threads", type=int, help="torch threads (default: as a run sets them, trainer.threads)")
    parser.add_argument("--min-ratio", type=float, default=0.8, help="exit 1 where rexlab / plain is below this")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(ENVS)
    if unknown := [n for n in names if n not in ENVS]:
        parser.error(f"--only: unknown env(s) {unknown}; choose among {', '.join(ENVS)}")
    threads = Devices(threads=args.threads).apply_threads()
    torch.use_deterministic_algorithms(True)
    print(f"T-REX reward fitting, pairs per member per second; torch {torch.__version__}, {threads} thread(s) of "
          f"{available_cores()} usable cores (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
          f"best of {args.repeats}", flush=True)
    rows, worst = [], math.inf
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            pairs = args.atari_pairs if name == "atari" else args.pairs
            what, ours, theirs, seconds = measure(name, pairs, args.repeats, Path(tmp))
            worst = min(worst, ours / theirs)
            rows.append(f"| {what} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} | {seconds} |")
            print(rows[-1], flush=True)
    print("\n| workload | rexlab pairs/s | plain loop pairs/s | ratio | seconds (rexlab / plain) |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    if worst < args.min_ratio:
        print(f"FAIL: rexlab's stage runs at {worst:.2f} of the plain loop (< {args.min_ratio})")
        return 1
    print(f"ok: every ratio >= {args.min_ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
