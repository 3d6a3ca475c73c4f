"""Plots: the two every control run logs (reward extrapolation, the learning curve), a sweep's text runs' gold against
KL, and where a run's models land on harmlessness and helpfulness."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from core.evaluation import pearson  # noqa: E402


def _finish(fig: Figure, ax: Axes, path: Path, legend_loc: Literal["best", "upper left"] | None,
            rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> None:
    """Grid, the legend of the labelled artists at `legend_loc` (None: the caller drew its own), the layout
    within `rect` (of the figure), then save to `path` and close."""
    ax.grid(alpha=0.3)
    if legend_loc is not None:
        ax.legend(loc=legend_loc, fontsize=8)
    fig.tight_layout(rect=rect)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reward_extrapolation(path: Path, demo_true: np.ndarray, demo_learned: np.ndarray,
                         policy_true: np.ndarray, policy_learned: np.ndarray, title: str) -> None:
    """Learned vs true return (T-REX Fig. 3 style): demonstrations and final-policy rollouts marked;
    the dashed line is the best demonstration's true return."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(demo_true, demo_learned, label="demonstrations", marker="o", color="tab:blue", alpha=0.8)
    ax.scatter(policy_true, policy_learned, label="final policy rollouts", marker="^", color="tab:orange",
               alpha=0.8)
    ax.axvline(np.max(demo_true), color="tab:blue", ls="--", lw=1, label="best demonstration")
    r = pearson(np.concatenate([demo_true, policy_true]), np.concatenate([demo_learned, policy_learned]))
    ax.set(xlabel="true return", ylabel="learned return (standardised reward, summed)")
    ax.set_title(f"{title}\nreward extrapolation: Pearson r = {r:.3f} over demonstrations and\nfinal-policy "
                 f"rollouts (eval/return_correlation)", fontsize=10)
    _finish(fig, ax, path, legend_loc="best")


def learning_curve(path: Path, history: dict[str, list[tuple[int, float]]], best_demo: float | None,
                   eval_return: float | None, title: str) -> None:
    """True return during policy optimisation (and the learned return, right axis), with the
    learner that made the demonstrations, the best demonstration and the final evaluation."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label, color, dashes in (("learner/true_return", "demonstrator's learner: true return", "tab:gray", "--"),
                                      ("train/true_return", "policy: true return", "tab:orange", "-")):
        if history.get(key):  # (both on their own env steps; the learner ran first): the learner dashed, on top
            steps, values = zip(*history[key], strict=True)
            ax.plot(steps, values, label=label, color=color, ls=dashes, lw=1.5 if dashes == "--" else 2,
                    zorder=3 if dashes == "--" else 2)
    if best_demo is not None:
        ax.axhline(best_demo, color="tab:blue", ls="--", lw=1, label="best demonstration")
    if eval_return is not None and history.get("train/true_return"):
        ax.scatter([history["train/true_return"][-1][0]], [eval_return], color="black", zorder=5,
                   label="final evaluation (mean)")
    ax.set(xlabel="environment steps", ylabel="true return (episode)", title=title)
    if not history.get("train/true_return"):  # no policy optimised on a return (SFT, DPO): its training losses
        losses = [k for k in sorted(history) if k.endswith("/train_loss") or k == "dpo/loss"]
        for key in losses:
            steps, values = zip(*history[key], strict=True)
            ax.plot(steps, values, lw=1.5, label=key)
        if losses:
            ax.set(xlabel="training steps", ylabel="training loss")
    if history.get("train/learned_return"):
        ax2 = ax.twinx()
        steps, values = zip(*history["train/learned_return"], strict=True)
        ax2.plot(steps, values, color="tab:green", alpha=0.6, lw=1, label="policy: learned return")
        ax2.set_ylabel("learned return", color="tab:green")
        ax2.legend(loc="lower right", fontsize=8)
    _finish(fig, ax, path, legend_loc="upper left")


def sweep_gold_vs_kl(path: Path, points: list[tuple[str, float, float, float]], title: str) -> None:
    """A sweep's text runs on one picture: each run's final gold reward against its KL to the reference,
    points: (setting, KL, gold, the reference's gold); one colour per setting (its seeds' runs as dots, their mean
    as a cross), the reference's gold (KL 0) as a dashed line."""
    fig, ax = plt.subplots(figsize=(7, 4.8))
    settings = list(dict.fromkeys(p[0] for p in points))
    colors = plt.get_cmap("tab10" if len(settings) <= 10 else "tab20")  # (tab20 pairs hues: only when needed)
    for k, setting in enumerate(settings):
        kl = np.array([p[1] for p in points if p[0] == setting])
        gold = np.array([p[2] for p in points if p[0] == setting])
        color = colors(k % colors.N)
        ax.scatter(kl, gold, color=color, alpha=0.6, s=25)
        ax.scatter([kl.mean()], [gold.mean()], color=color, marker="X", s=110, edgecolor="black", zorder=5,
                   label=f"{setting} ({len(kl)} run{'s' if len(kl) > 1 else ''})")
    reference = np.array([p[3] for p in points])
    if np.isfinite(reference).any():
        ax.axhline(float(np.nanmean(reference)), color="tab:gray", ls="--", lw=1, label="reference policy (KL 0)")
    ax.set(xlabel="KL(policy || reference), nats per response (eval/kl_to_ref)",
           ylabel="gold reward (eval/gold_reward_mean)", title=f"{title}\nfinal gold reward against KL, per run")
    _finish(fig, ax, path, legend_loc="best")


# The models one text run measures on the harmlessness and helpfulness axes: metric prefix (eval/<prefix>harmlessness)
# and label, in pipeline order
STAGES = (("base_", "base model, plain prompt"), ("few_shot_", "base model, few-shot prompt"),
          ("ref_", "reference: the model the last stage started from"), ("", "final policy"))


def stage_points(metrics: dict[str, float]) -> list[tuple[str, float, float]]:
    """(label, helpfulness, harmlessness) of each model `metrics` (eval/*) measured, in pipeline order."""
    return [(label, metrics[f"eval/{p}helpfulness"], metrics[f"eval/{p}harmlessness"]) for p, label in STAGES
            if f"eval/{p}helpfulness" in metrics and f"eval/{p}harmlessness" in metrics]


def harmless_vs_helpful(path: Path, runs: list[tuple[str, dict[str, float]]], title: str) -> None:
    """Where each model of each run (name, its eval/* metrics) lands on helpfulness (x) and harmlessness (y): one
    marker per model kind (base, few-shot, reference, final), one colour per run (named in the legend below), each
    run's path from base to final drawn as arrows."""
    from matplotlib.lines import Line2D

    several = len(runs) > 1
    fig, ax = plt.subplots(figsize=(7.5, 5.2 + (0.18 * len(runs) if several else 0)))
    markers = dict(zip((label for _, label in STAGES), ("o", "s", "^", "*"), strict=True))
    colors = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    for k, (_, metrics) in enumerate(runs):
        points, color = stage_points(metrics), colors(k % colors.N) if several else "tab:blue"
        for label, x, y in points:
            ax.scatter([x], [y], marker=markers[label], s=170 if markers[label] == "*" else 60, zorder=4,
                       color=color, edgecolor="black", linewidth=0.5)
        for (_, x0, y0), (_, x1, y1) in zip(points, points[1:], strict=False):
            ax.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "->", "lw": 1, "alpha": 0.6, "color": color})
    kinds = [Line2D([], [], ls="", marker=m, color="tab:gray", markeredgecolor="black",
                    markersize=8 if m != "*" else 12, label=label) for label, m in markers.items()]
    ax.legend(handles=kinds, loc="best", fontsize=8)
    if several:  # the runs' colours, below the axes (their names are long)
        names = [Line2D([], [], ls="", marker="*", markersize=11, color=colors(k % colors.N),
                        label=name if len(name) <= 90 else name[:87] + "...") for k, (name, _) in enumerate(runs)]
        fig.legend(handles=names, loc="lower center", fontsize=7, ncol=1, frameon=False)
    ax.set(xlabel="helpfulness (eval/helpfulness: held-out helpful prompts)",
           ylabel="harmlessness (eval/harmlessness: held-out red-team prompts)",
           title=f"{title}\nharmlessness against helpfulness, base model to final policy")
    _finish(fig, ax, path, legend_loc=None, rect=(0, 0.032 * len(runs) if several else 0, 1, 1))
