"""The text track's comparison tables in docs/results.md, from sweep folders of env=text runs.

    .venv/bin/python docs/text_results.py multirun/2026-12-02/17-26-18 [more sweep folders] [--plot NAME]
    .venv/bin/python docs/text_results.py --cai multirun/... [--plot NAME]     # experiment=cai runs

Reads each finished job of the sweeps (its jobs.jsonl line, checkpoints/evaluation.json, metrics.jsonl and the
timestamps of its main.log), adds them to the committed records (docs/results_text_runs.csv: one row per setting
and seed, the newest run winning, so the tables outlive the sweep folders), and prints the tables as markdown:
per setting (the job's overrides without the seed) the mean and std over seeds of the final gold reward, the
reference's, the KL to the reference, the win rate, the held-out accuracies and the wall time. With --plot NAME,
docs/img/NAME.png puts every run of those settings on one gold-against-KL picture (core/plots.py's sweep plot, as a
sweep's parent run gets). With --cai, the records are docs/results_cai_runs.csv and the columns each model's
harmlessness and helpfulness (base, few-shot base, SL-CAI, RL-CAI), the judge's agreement and position bias, the
preference model's held-out accuracy on each prompt kind's pairs, RL's KL and the refusal rate; --plot draws the
runs on the harmlessness-against-helpfulness picture.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
RECORDS = HERE / "results_text_runs.csv"
COLUMNS = {  # record field: (metric, table heading)
    "gold": ("eval/gold_reward_mean", "gold reward"),
    "reference_gold": ("eval/ref_gold_reward_mean", "reference's gold"),
    "kl": ("eval/kl_to_ref", "KL, nats"),
    "win_rate": ("eval/win_rate_vs_ref", "win rate"),
    "label_agreement": ("preference/label_agreement", "label agreement"),
    "held_out_accuracy": ("", "held-out accuracy (labels)"),
    "true_accuracy": ("", "held-out accuracy (gold order)"),
    "minutes": ("", "wall minutes"),
}
CAI_COLUMNS = {
    **{f"{p}{axis}": (f"eval/{p}{axis}", f"{name} {axis}") for p, name in (("base_", "base"), ("few_shot_", "few-shot"),
                                                                           ("ref_", "SL-CAI"), ("", "RL-CAI"))
       for axis in ("harmlessness", "helpfulness")},
    "refusal_rate": ("eval/refusal_rate", "RL-CAI refusals"),
    "judge_agreement": ("preference/judge_agreement", "label agreement with gold"),
    **{f"pm_{kind}": (f"reward/val_true_pair_accuracy/{kind}", f"PM on held-out {name} pairs (gold order)")
       for kind, name in (("red_team", "red-team"), ("helpful", "helpful"))},
    "position_bias": ("preference/position_bias", "judge position bias"),
    "kl": ("eval/kl_to_ref", "KL to SL-CAI, nats"),
    "clipfrac": ("train/clipfrac", "last clipfrac"),
    "approx_kl": ("train/approx_kl", "last approx KL"),
    "minutes": ("", "wall minutes"),
}


def last_values(folder: Path) -> dict[str, float]:
    """Each metric's last value in a run's metrics.jsonl."""
    out: dict[str, float] = {}
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        out.update(json.loads(line)["metrics"])
    return out


def minutes(folder: Path) -> float:
    """Wall minutes from the first to the last line of the run's main.log."""
    stamps = [datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f") for line in
              (folder / "main.log").read_text().splitlines() if line.startswith("[20")]
    return (stamps[-1] - stamps[0]).total_seconds() / 60 if stamps else float("nan")


def jobs(sweep: Path) -> list[dict[str, str]]:
    """The jobs of a sweep folder (its jobs.jsonl), or a single run's folder as one finished job (its overrides from
    .hydra/overrides.yaml)."""
    if (sweep / "jobs.jsonl").is_file():
        return [json.loads(line) for line in (sweep / "jobs.jsonl").read_text().splitlines()]
    overrides = [line[2:].strip() for line in (sweep / ".hydra" / "overrides.yaml").read_text().splitlines()]
    return [{"status": "FINISHED", "output_dir": str(sweep), "overrides": " ".join(overrides)}]


def final_metrics(job: dict[str, str]) -> tuple[Path, dict[str, float]] | None:
    """A finished job's folder and its metrics (each one's last value, and the final evaluation's), or None where
    the job did not finish or has no final evaluation."""
    folder = Path(job["output_dir"])
    if job["status"] != "FINISHED" or not (folder / "checkpoints" / "evaluation.json").is_file():
        return None
    return folder, last_values(folder) | json.loads((folder / "checkpoints" / "evaluation.json").read_text())


def sweep_records(sweep: Path, columns: dict[str, tuple[str, str]]) -> list[dict[str, str]]:
    """A record per finished job of the sweep folder (or the run folder)."""
    out = []
    for job in jobs(sweep):
        finished = final_metrics(job)
        if finished is None:
            continue
        folder, metrics = finished
        overrides = job["overrides"].split()
        seed = next((o.split("=", 1)[1] for o in overrides if o.startswith("seed=")), "0")
        setting = " ".join(o for o in overrides if not o.startswith(("seed=", "progress=", "tracking", "hydra",
                                                                     "policy.init=")))
        record = {"setting": setting, "seed": seed, "date": datetime.fromtimestamp(folder.stat().st_mtime).isoformat(
            " ", "minutes"), "folder": str(folder), "minutes": f"{minutes(folder):.1f}"}
        for field, (metric, _) in columns.items():
            if metric and metric in metrics:
                record[field] = f"{metrics[metric]:.4g}"
        held = metrics.get("reward/val_pair_accuracy", metrics.get("dpo/accuracy"))
        true = metrics.get("reward/val_true_pair_accuracy", metrics.get("dpo/val_true_pair_accuracy"))
        record["held_out_accuracy"] = f"{held:.3g}" if held is not None else ""
        record["true_accuracy"] = f"{true:.3g}" if true is not None else ""
        out.append(record)
    return out


def read_records(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        return {(r["setting"], r["seed"]): r for r in csv.DictReader(f)}


def write_records(records: dict[tuple[str, str], dict[str, str]], path: Path, columns: dict[str, tuple[str, str]]
                  ) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, ("setting", "seed", *columns, "date", "folder"), extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(records[k] for k in sorted(records))


def cell(values: list[str]) -> str:
    numbers = np.array([float(v) for v in values if v not in ("", None)])
    if not len(numbers):
        return "-"
    return f"{numbers.mean():.3f} ± {numbers.std():.3f}" if len(numbers) > 1 else f"{numbers[0]:.3f}"


def tables(records: dict[tuple[str, str], dict[str, str]], settings: list[str], columns: dict[str, tuple[str, str]]
           ) -> str:
    """Mean ± std over seeds per setting, then every seed's row."""
    head = ["setting", "seeds", *(heading for _, heading in columns.values())]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for setting in settings:
        rows = [r for (s, _), r in sorted(records.items()) if s == setting]
        lines.append(f"| `{setting}` | {len(rows)} | " + " | ".join(cell([r.get(f, '') for r in rows])
                                                                   for f in columns) + " |")
    seeds = ["", "| setting | seed | " + " | ".join(h for _, h in columns.values()) + " |", "|" + "---|" * len(head)]
    for setting in settings:
        for (s, seed), r in sorted(records.items()):
            if s == setting:
                seeds.append(f"| `{setting}` | {seed} | " + " | ".join(r.get(f, "") or "-" for f in columns) + " |")
    return "\n".join(lines + seeds) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", type=Path, nargs="+", help="sweep folders (multirun/<date>/<time>) or run folders")
    parser.add_argument("--plot", help="draw the settings' runs on one gold-against-KL plot, docs/img/<PLOT>.png")
    parser.add_argument("--cai", action="store_true", help="experiment=cai runs: harmlessness and helpfulness columns")
    args = parser.parse_args()
    path, columns = (HERE / "results_cai_runs.csv", CAI_COLUMNS) if args.cai else (RECORDS, COLUMNS)
    records = read_records(path)
    settings: list[str] = []
    for sweep in args.sweeps:
        for record in sweep_records(sweep, columns):
            records[(record["setting"], record["seed"])] = record
            if record["setting"] not in settings:
                settings.append(record["setting"])
    write_records(records, path, columns)
    print(tables(records, settings, columns))
    if args.plot and args.cai:
        sys.path.insert(0, str(HERE.parent))
        from core.plots import harmless_vs_helpful

        runs = [(f"seed {seed}: {setting}", {f"eval/{k}": float(r[k]) for k in CAI_COLUMNS if k.endswith("ness")
                                        and r.get(k)}) for (setting, seed), r in sorted(records.items())
                if setting in settings]
        harmless_vs_helpful(HERE / "img" / f"{args.plot}.png", runs, "experiment=cai, per run")
    elif args.plot:
        sys.path.insert(0, str(HERE.parent))
        from core.plots import sweep_gold_vs_kl

        points = [(r["setting"], float(r["kl"]), float(r["gold"]), float(r.get("reference_gold") or "nan"))
                  for (setting, _), r in sorted(records.items()) if setting in settings]
        sweep_gold_vs_kl(HERE / "img" / f"{args.plot}.png", points, "env=text, 3 seeds each")


if __name__ == "__main__":
    main()
