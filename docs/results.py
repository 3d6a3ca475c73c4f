"""Build docs/results.md from the run records in docs/results_runs.csv, adding any MLflow stores' runs.

    .venv/bin/python docs/results.py                                     # re-render from the records
    .venv/bin/python docs/results.py --uri sqlite:////path/to/mlflow.db  # add (or update) a store's runs

A record is one finished run's figures: env, method (BC, T-REX, D-REX, PPO on the true reward),
seed, the final policy's true return (eval/true_return_mean), the best demonstration it saw, the
true return of D-REX's BC clone, reward diagnostics, wall time, the command that made it (the run's
`overrides` tag without seed and bookkeeping) and its MLflow run id. The records are committed, so
the tables survive the store they came from (MLflow stores are per machine). Per env, method and
seed the newest run counts: a store's run replaces an older record of the same key. Runs tagged
`results=exclude` (exploratory settings, reported in the intro instead) are left out. One
reward-extrapolation plot per env and learned-reward method is copied into docs/img/.
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

METHODS = ("best demo", "BC", "BC (D-REX's clone)", "T-REX", "D-REX", "PPO, true reward")
RUN_METHODS = ("BC", "T-REX", "D-REX", "PPO, true reward")  # the methods a run is (the others come from them)
ENVS = ("cartpole", "hopper", "halfcheetah", "atari")
BOOKKEEPING = ("seed=", "progress=", "tracking.uri=", "hydra.")
FIELDS = ("env", "method", "seed", "true_return", "true_return_std", "best_demo", "bc_clone_return",
          "return_correlation", "val_pair_accuracy", "label_agreement", "minutes", "command", "run_id", "date", "note")
METRICS = {"true_return": "eval/true_return_mean", "true_return_std": "eval/true_return_std",
           "best_demo": "demos/best_true_return", "bc_clone_return": "bc/true_return_mean",
           "return_correlation": "eval/return_correlation", "val_pair_accuracy": "reward/val_pair_accuracy",
           "label_agreement": "preference/label_agreement"}
HERE = Path(__file__).parent
SUMMARY = "summary.png"  # the bar chart of every env and method, in docs/img/


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
    """The env's row name: its config option, with the game for Atari (e.g. 'atari (Seaquest)')."""
    env = tags.get("choice.env")
    return f"{env} ({params['env.game']})" if env == "atari" and "env.game" in params else env


Key = tuple[str, str, str]  # env, method, seed


def read_records(path: Path) -> dict[Key, dict[str, str]]:
    """The committed records, by (env, method, seed); a missing file is no records."""
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for line, row in enumerate(rows, start=2):
        if row.get("method") not in RUN_METHODS or not row.get("env") or not row.get("true_return"):
            raise SystemExit(f"{path}:{line}: a record needs env, a method in {RUN_METHODS} and true_return; got {row}")
    return {(r["env"], r["method"], r["seed"]): r for r in rows}


def write_records(path: Path, records: dict[Key, dict[str, str]]) -> None:
    def order(key: Key) -> tuple:
        env, method, seed = key
        return env_order(env), RUN_METHODS.index(method), seed_order(seed)

    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(records[k] for k in sorted(records, key=order))


def store_records(client: MlflowClient, uri: str) -> dict[Key, dict[str, str]]:
    """The finished runs of the store's 'rexlab' experiment as records (the newest per key)."""
    experiment = client.get_experiment_by_name("rexlab")
    if experiment is None:
        raise SystemExit(f"{uri}: no 'rexlab' experiment in this MLflow store")
    found: dict[Key, dict[str, str]] = {}
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'", max_results=5000,
                              order_by=["attributes.start_time DESC"])
    for run in runs:
        tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
        env, method = env_label(tags, params), method_of(tags)
        if env is None or method is None or "eval/true_return_mean" not in metrics or tags.get("results") == "exclude":
            continue
        key = (env, method, params.get("seed", "0"))  # the resolved seed (the overrides may spell it +seed=...)
        if key in found:  # an older run of the same env, method and seed
            if command_of(tags.get("overrides", "")) != found[key]["command"]:
                print(f"warning: {', '.join(key)} was also run as `{command_of(tags.get('overrides', ''))}`; "
                      "the newer run counts")
            continue
        record = {"env": key[0], "method": key[1], "seed": key[2], "command": command_of(tags.get("overrides", "")),
                  "run_id": run.info.run_id, "note": "",
                  "date": datetime.fromtimestamp(run.info.start_time / 1000, UTC).strftime("%Y-%m-%d %H:%M")}
        record |= {field: f"{metrics[name]:.4g}" for field, name in METRICS.items() if name in metrics}
        if run.info.end_time:
            record["minutes"] = f"{(run.info.end_time - run.info.start_time) / 60_000:.0f}"
        found[key] = record
    return found


def merge(records: dict[Key, dict[str, str]], new: dict[Key, dict[str, str]]) -> list[Key]:
    """Add the new records, replacing older ones of the same key; returns the keys that changed."""
    changed = [k for k, r in new.items() if k not in records or r["date"] >= records[k]["date"]]
    records.update({k: new[k] for k in changed})
    return changed


def env_order(env: str) -> tuple[int, str]:
    return next((k for k, name in enumerate(ENVS) if env.startswith(name)), 99), env


def seed_order(seed: str) -> tuple[int, str]:
    """Seeds in numeric order (any non-numeric text after them)."""
    return (int(seed), "") if seed.lstrip("-").isdigit() else (2**31, seed)


def table(records: dict[Key, dict[str, str]]) -> dict[str, dict[str, dict[str, float]]]:
    """results[env][column][seed] = true return; 'best demo' from the T-REX run of a seed (else D-REX's),
    'BC (D-REX's clone)' from the D-REX run; 'best demos seen' holds every best demonstration of a seed."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (env, method, seed), r in records.items():
        cols = out.setdefault(env, {m: {} for m in (*METHODS, "best demos seen")})
        cols[method][seed] = float(r["true_return"])
        if r.get("bc_clone_return"):
            cols["BC (D-REX's clone)"][seed] = float(r["bc_clone_return"])
    for (env, method, seed), r in sorted(records.items(), key=lambda kv: kv[0][1] != "T-REX"):
        if method in ("T-REX", "D-REX") and r.get("best_demo"):
            out[env]["best demo"].setdefault(seed, float(r["best_demo"]))
            seen = out[env]["best demos seen"].setdefault(seed, [])
            seen += [] if float(r["best_demo"]) in seen else [float(r["best_demo"])]
    return out


def cell(values: list[float]) -> str:
    return f"{np.mean(values):.1f} ± {np.std(values):.1f} (n={len(values)})" if values else "-"


def render(records: dict[Key, dict[str, str]], intro: str, img: Path) -> str:
    results = table(records)
    envs = sorted(results, key=env_order)
    lines = [intro.rstrip() + "\n"] if intro else []
    lines += ["## True return of the final policy (mean ± std over seeds)", "", f"![summary](img/{SUMMARY})", "",
              "| env | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    lines += [f"| {env} | " + " | ".join(cell(list(results[env][m].values())) for m in METHODS) + " |" for env in envs]
    lines += ["", "'best demo' is the best demonstration's true return in the T-REX and D-REX runs (the same "
              "demonstrations per seed). 'BC' is `policy=bc` on all the demonstrations; 'BC (D-REX's clone)' is the "
              "clone D-REX injects noise into (its best `reward.num_demos` demonstrations), without noise.",
              "", "## Per seed", "", "| env | seed | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 2) + "|"]
    starred = False
    for env in envs:
        for seed in sorted({s for m in METHODS for s in results[env][m]}, key=seed_order):
            row = [f"{results[env][m][seed]:.1f}" if seed in results[env][m] else "-" for m in METHODS]
            seen = results[env]["best demos seen"].get(seed, [])
            if len(seen) > 1:  # the T-REX and D-REX runs of this seed were made at different commits
                row[0], starred = " / ".join(f"{d:.1f}" for d in seen) + " *", True
            lines.append(f"| {env} | {seed} | " + " | ".join(row) + " |")
    if starred:
        lines += ["", "\\* The T-REX and D-REX runs of this seed saw different best demonstrations (T-REX's first): "
                  "they were made at different commits, whose learners' rollouts differ (the PPO update was reworked "
                  "for speed in between; not traced further). The summary table uses T-REX's."]
    lines += ["", "## Commands", ""]
    for env in envs:
        for method in RUN_METHODS:
            by_command: dict[str, list[str]] = {}
            for (e, m, seed), r in records.items():
                if (e, m) == (env, method):
                    by_command.setdefault(r["command"], []).append(seed)
            for command, seeds in sorted(by_command.items()):
                lines.append(f"- {env}, {method}: `{command}` with `seed=` {', '.join(sorted(seeds, key=seed_order))}")
    notes = sorted({r["note"] for r in records.values() if r.get("note")})
    if notes:
        lines += ["", "Records with a note (docs/results_runs.csv):"] + [f"- {n}" for n in notes]
    lines += ["", "## Reward extrapolation (one seed each)", ""]
    lines += [f"![{p.stem.replace('-', ' ')}](img/{p.name})" for p in sorted(img.glob("*.png")) if p.name != SUMMARY]
    return "\n".join(lines) + "\n"


def summary_plot(records: dict[Key, dict[str, str]], path: Path) -> None:
    """One panel per env: each method's seeds as dots and their mean as a bar, the best demo as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = table(records)
    envs = sorted(results, key=env_order)
    columns = [m for m in METHODS if m != "best demo"]
    fig, axes = plt.subplots(1, len(envs), figsize=(3.2 * len(envs), 3.6), squeeze=False)
    for ax, env in zip(axes[0], envs, strict=True):
        for x, method in enumerate(columns):
            values = list(results[env][method].values())
            if values:
                ax.bar(x, np.mean(values), color=f"C{x}", alpha=0.45)
                ax.scatter([x] * len(values), values, color=f"C{x}", s=14, zorder=3)
        demos = list(results[env]["best demo"].values())
        if demos:
            ax.axhline(np.mean(demos), color="k", ls="--", lw=1, label="best demo (mean)")
        ax.set_xticks(range(len(columns)), [c.replace(" (D-REX's clone)", "\n(D-REX clone)").replace(", ", "\n")
                                            for c in columns], fontsize=7)
        ax.set_title(env, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    axes[0][0].set_ylabel("true return of the final policy")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Final true return per method: seeds (dots) and their mean (bars)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def copy_plots(client: MlflowClient, records: dict[Key, dict[str, str]], changed: list[Key], img: Path) -> None:
    """One reward-extrapolation plot per env and learned-reward method, from the lowest-seed changed run."""
    done: set[tuple[str, str]] = set()
    for env, method, seed in sorted(changed, key=lambda k: seed_order(k[2])):
        if method not in ("T-REX", "D-REX") or (env, method) in done:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = client.download_artifacts(records[(env, method, seed)]["run_id"],
                                                  "plots/reward_extrapolation.png", tmp)
            except Exception:  # a run without the plot
                continue
            name = re.sub(r"\W+", "-", f"{env}-{method.replace('-', '')}").strip("-").lower() + ".png"
            shutil.copy(local, img / name)
        done.add((env, method))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", action="append", default=[], help="MLflow tracking URI whose runs to add (repeatable)")
    parser.add_argument("--records", type=Path, default=HERE / "results_runs.csv")
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    parser.add_argument("--intro", type=Path, default=HERE / "results_intro.md",
                        help="hand-written text placed above the generated tables")
    args = parser.parse_args()
    records = read_records(args.records)
    img = args.out.parent / "img"
    img.mkdir(parents=True, exist_ok=True)
    for uri in args.uri:
        client = MlflowClient(uri)
        new = store_records(client, uri)
        changed = merge(records, new)
        print(f"{uri}: {len(new)} runs, {len(changed)} new or newer records")
        copy_plots(client, records, changed, img)
    write_records(args.records, records)
    summary_plot(records, img / SUMMARY)
    args.out.write_text(render(records, args.intro.read_text() if args.intro.exists() else "", img))
    print(f"wrote {args.records} ({len(records)} records) and {args.out}")


if __name__ == "__main__":
    main()
