"""The label-noise study in docs/results.md: how the simulated labelers' agreement and count change what is learned.

    .venv/bin/python docs/label_noise.py multirun/<date>/<time> [more sweep folders] [--plot label_noise]

Reads each finished job of `python main.py -m experiment=label_noise_trex` and `... experiment=label_noise_text`
sweeps (jobs.jsonl, metrics.jsonl, checkpoints/evaluation.json, main.log's timestamps), adds them to the committed
records (docs/results_label_noise.csv: one row per study, method, agreement, annotators and seed, the newest run
winning), and prints per setting the mean ± std over seeds of: the labels' measured agreement with the true order,
the held-out accuracy against the true order (the T-REX or Bradley-Terry reward model's
`reward/val_true_pair_accuracy`, DPO's implicit reward's `dpo/val_true_pair_accuracy`), and the final policy's true
return (control) or gold reward and KL to the reference (text). With --plot NAME, docs/img/NAME.png draws both
against the target agreement, a line per method and annotator count, a column per study (the control
task's env name, or text).
"""

from __future__ import annotations

import argparse
import csv
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml
from text_results import cell, final_metrics, jobs, minutes  # docs/ is the script's folder, so its sibling imports

HERE = Path(__file__).parent
RECORDS = HERE / "results_label_noise.csv"
KEY = ("study", "method", "agreement", "annotators", "seed")
FIELDS = (*KEY, "label_agreement", "true_accuracy", "outcome", "reference", "kl", "minutes", "date", "folder")


def title(study: str) -> str:
    return "env=text: gold reward" if study == "text" else f"T-REX on {study}: true return"


def record(job: dict[str, str]) -> dict[str, str] | None:
    """The study's figures of one finished job, or None (not finished, or no final evaluation)."""
    finished = final_metrics(job)
    if finished is None:
        return None
    folder, metrics = finished
    overrides = dict(o.split("=", 1) for o in job["overrides"].split())
    text = "eval/gold_reward_mean" in metrics
    study = "text" if text else yaml.safe_load((folder / "config.yaml").read_text())["env"]["name"]
    out = {"study": study, "method": overrides.get("policy", "ppo") if text else "T-REX",
           "agreement": overrides.get("preference.agreement", "0.72"),
           "annotators": overrides.get("preference.annotators", "1"), "seed": overrides.get("seed", "0"),
           "minutes": f"{minutes(folder):.1f}", "folder": str(folder),
           "date": datetime.fromtimestamp(folder.stat().st_mtime).isoformat(" ", "minutes")}
    figures = {"label_agreement": "preference/label_agreement",
               "true_accuracy": ("dpo/val_true_pair_accuracy" if out["method"] == "dpo"
                                 else "reward/val_true_pair_accuracy"),
               "outcome": "eval/gold_reward_mean" if text else "eval/true_return_mean",
               "reference": "eval/ref_gold_reward_mean" if text else "demos/best_true_return",
               "kl": "eval/kl_to_ref"}
    for field, metric in figures.items():
        out[field] = f"{metrics[metric]:.4g}" if metric in metrics else ""
    return out


def read_records() -> dict[tuple[str, ...], dict[str, str]]:
    if not RECORDS.exists():
        return {}
    with RECORDS.open(newline="") as f:
        return {tuple(r[k] for k in KEY): r for r in csv.DictReader(f)}


def write_records(records: dict[tuple[str, ...], dict[str, str]]) -> None:
    with RECORDS.open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records[k] for k in sorted(records))


def settings(records: dict[tuple[str, ...], dict[str, str]]) -> dict[tuple[str, ...], list[dict[str, str]]]:
    """The records grouped by study, method, annotators and agreement (the seeds of a setting together)."""
    out: dict[tuple[str, ...], list[dict[str, str]]] = {}
    for (study, method, agreement, annotators, _), r in sorted(records.items()):
        out.setdefault((study, method, annotators, agreement), []).append(r)
    return out


def values(rows: list[dict[str, str]], field: str) -> np.ndarray:
    return np.array([float(r[field]) for r in rows if r.get(field)])


def table(records: dict[tuple[str, ...], dict[str, str]]) -> str:
    head = ("study", "method", "annotators", "target agreement", "seeds", "label agreement",
            "held-out accuracy (true order)", "final true return / gold", "best demo / reference's gold", "KL, nats",
            "wall minutes")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (study, method, annotators, agreement), rows in settings(records).items():
        cells = [cell([r.get(f, "") for r in rows])
                 for f in ("label_agreement", "true_accuracy", "outcome", "reference", "kl", "minutes")]
        lines.append(f"| {study} | {method} | {annotators} | {agreement} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(records: dict[tuple[str, ...], dict[str, str]], path: Path) -> None:
    """Held-out accuracy against the true order (top) and the final outcome (bottom) against the target agreement,
    mean and std over seeds, a line per method and annotator count, a column per study."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = settings(records)
    studies = sorted({k[0] for k in groups}, key=lambda s: (s == "text", s))  # control tasks first
    fig, axes = plt.subplots(2, len(studies), figsize=(5.5 * len(studies), 7), squeeze=False)
    for col, study in enumerate(studies):
        lines = sorted({(m, a) for s, m, a, _ in groups if s == study})
        for method, annotators in lines:
            points = sorted((float(g), rows) for (s, m, a, g), rows in groups.items()
                            if (s, m, a) == (study, method, annotators))
            x = [g for g, _ in points]
            label = f"{method}, {annotators} annotator{'s' if annotators != '1' else ''}"
            for row, field in enumerate(("true_accuracy", "outcome")):
                v = [values(rows, field) for _, rows in points]
                keep = [i for i, vi in enumerate(v) if len(vi)]
                axes[row, col].errorbar([x[i] for i in keep], [v[i].mean() for i in keep],
                                        yerr=[v[i].std() for i in keep], marker="o", capsize=3, label=label)
        reference = values([r for (s, *_), r in records.items() if s == study], "reference")
        if len(reference):
            axes[1, col].axhline(reference.mean(), color="gray", ls="--", lw=1,
                                 label="reference's gold" if study == "text" else "best demonstration (mean)")
        axes[0, col].set(title=title(study), ylabel="held-out accuracy, true order")
        axes[1, col].set(xlabel="target agreement of the labels with the true order",
                         ylabel="final gold reward" if study == "text" else "final true return")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("How noisy labels hurt (mean and std over seeds)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", type=Path, nargs="*", help="sweep folders (multirun/<date>/<time>)")
    parser.add_argument("--plot", help="draw the study, docs/img/<PLOT>.png")
    args = parser.parse_args()
    records = read_records()
    for sweep in args.sweeps:
        for job in jobs(sweep):
            r = record(job)
            if r is not None:
                records[tuple(r[k] for k in KEY)] = r
    write_records(records)
    print(table(records))
    if args.plot:
        plot(records, HERE / "img" / f"{args.plot}.png")


if __name__ == "__main__":
    main()
