"""Build docs/results.md from the finished runs in an MLflow store.

    .venv/bin/python docs/results.py --uri sqlite:////path/to/mlflow.db

Groups runs by env and method (best demonstration, BC, T-REX, D-REX, PPO on the true reward) and
gives each the per-seed figures and the mean ± std over seeds of the final policy's true return
(eval/true_return_mean; the newest finished run of an env, method and seed counts). Lists the
commands that made them (the runs' `overrides` tags, without seed and bookkeeping) and copies one
reward-extrapolation plot per env and learned-reward method into docs/img/. Runs tagged
`results=exclude` (exploratory settings, reported in the intro instead) are left out.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

METHODS = ("best demo", "BC", "BC (D-REX's clone)", "T-REX", "D-REX", "PPO, true reward")
ENVS = ("cartpole", "hopper", "halfcheetah", "atari")
BOOKKEEPING = ("seed=", "progress=", "tracking.uri=", "hydra.")


def command_of(overrides: str) -> str:
    """The command line without its seed and bookkeeping overrides."""
    kept = [p for p in overrides.split() if not p.lstrip("+").startswith(BOOKKEEPING)]
    return "python main.py " + " ".join(kept)


def method_of(tags: dict[str, str]) -> str | None:
    """The results table's column for a run, from its group-choice tags."""
    reward, policy = tags.get("choice.reward"), tags.get("choice.policy")
    if policy == "bc":
        return "BC"
    return {"true": "PPO, true reward", "trex": "T-REX", "drex": "D-REX"}.get(str(reward))


def env_label(tags: dict[str, str], params: dict[str, str]) -> str | None:
    """The env's row name: its config option, with the game for Atari (e.g. 'atari (Breakout)')."""
    env = tags.get("choice.env")
    return f"{env} ({params['env.game']})" if env == "atari" and "env.game" in params else env


def collect(client: MlflowClient) -> tuple[dict, dict, dict]:
    """(results[env][method][seed] = true return, commands[env][method] = {command: seeds}, a run id per
    (env, method) with a reward-extrapolation plot). The newest finished run of an (env, method, seed) counts."""
    experiment = client.get_experiment_by_name("rexlab")
    if experiment is None:
        raise SystemExit("no 'rexlab' experiment in this MLflow store")
    results: dict = defaultdict(lambda: defaultdict(dict))
    commands: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(set)))
    plots: dict = {}
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'", max_results=5000,
                              order_by=["attributes.start_time DESC"])
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        env, method = env_label(tags, run.data.params), method_of(tags)
        if env is None or method is None or "eval/true_return_mean" not in metrics:
            continue
        if tags.get("results") == "exclude":
            continue
        command = command_of(tags.get("overrides", ""))
        seed = run.data.params.get("seed", "0")  # the resolved seed (the overrides may spell it +seed=...)
        if seed in commands[env][method][command]:  # an older run of the same command and seed
            continue
        if seed in results[env][method]:
            print(f"warning: {env}, {method}, seed {seed} was also run as `{command}`; the newer run counts")
            continue
        results[env][method][seed] = metrics["eval/true_return_mean"]
        commands[env][method][command].add(seed)
        if "bc/true_return_mean" in metrics:
            results[env]["BC (D-REX's clone)"].setdefault(seed, metrics["bc/true_return_mean"])
        if method in ("T-REX", "D-REX"):
            if "demos/best_true_return" in metrics:  # the same demonstrations per seed, unless the code changed
                results[env]["best demo"].setdefault(seed, metrics["demos/best_true_return"])
                results[env]["best demo, all runs"].setdefault(seed, set()).add(metrics["demos/best_true_return"])
            plots.setdefault((env, method), run.info.run_id)
    return results, commands, plots


def seed_order(seed: str) -> tuple[int, str]:
    """Seeds in numeric order (any non-numeric text after them)."""
    return (int(seed), "") if seed.lstrip("-").isdigit() else (2**31, seed)


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{np.mean(values):.1f} ± {np.std(values):.1f} (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", required=True, help="MLflow tracking URI holding the runs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results.md")
    parser.add_argument("--intro", type=Path, default=Path(__file__).parent / "results_intro.md",
                        help="hand-written text placed above the generated tables")
    args = parser.parse_args()
    client = MlflowClient(args.uri)
    results, commands, plots = collect(client)
    envs = sorted(results, key=lambda e: (next((k for k, name in enumerate(ENVS) if e.startswith(name)), 99), e))
    lines = [args.intro.read_text().rstrip() + "\n"] if args.intro.exists() else []
    lines += ["## True return of the final policy (mean ± std over seeds)", "",
              "| env | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for env in envs:
        lines.append(f"| {env} | " + " | ".join(cell(list(results[env][m].values())) for m in METHODS) + " |")
    lines += ["", "'best demo' is the best demonstration's true return in the T-REX and D-REX runs (the same "
              "demonstrations per seed). 'BC' is `policy=bc` on all the demonstrations; 'BC (D-REX's clone)' is the "
              "clone D-REX injects noise into (its best `reward.num_demos` demonstrations), without noise.",
              "", "## Per seed", "", "| env | seed | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 2) + "|"]
    for env in envs:
        for seed in sorted({s for m in METHODS for s in results[env][m]}, key=seed_order):
            row = [f"{results[env][m][seed]:.1f}" if seed in results[env][m] else "-" for m in METHODS]
            demos = sorted(results[env]["best demo, all runs"].get(seed, ()), reverse=True)
            if len(demos) > 1:  # the T-REX and D-REX runs of this seed were made at different commits
                row[0] = " / ".join(f"{d:.1f}" for d in demos) + " *"
            lines.append(f"| {env} | {seed} | " + " | ".join(row) + " |")
    lines += ["", "\\* The T-REX and D-REX runs of this seed saw different best demonstrations: they were made "
              "at different commits, whose learners' rollouts differ (the PPO update was reworked for speed in "
              "between; not traced further). The summary table uses the newest run's.", "", "## Commands", ""]
    for env in envs:
        for method in [m for m in METHODS if m not in ("best demo", "BC (D-REX's clone)")]:
            for command, seeds in sorted(commands[env][method].items()):
                lines.append(f"- {env}, {method}: `{command}` with `seed=` {', '.join(sorted(seeds, key=seed_order))}")
    img = args.out.parent / "img"
    img.mkdir(exist_ok=True)
    lines += ["", "## Reward extrapolation (one seed each)", ""]
    for (env, method), run_id in sorted(plots.items()):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = client.download_artifacts(run_id, "plots/reward_extrapolation.png", tmp)
            except Exception:  # a run without the plot
                continue
            name = re.sub(r"\W+", "-", f"{env}-{method.replace('-', '')}").strip("-").lower() + ".png"
            shutil.copy(local, img / name)
        lines.append(f"![{env} {method}](img/{name})")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
