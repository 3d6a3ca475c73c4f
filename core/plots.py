"""The two plots every control run logs: reward extrapolation and the learning curve."""

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


def _finish(fig: Figure, ax: Axes, path: Path, legend_loc: Literal["best", "upper left"]) -> None:
    ax.grid(alpha=0.3)
    ax.legend(loc=legend_loc, fontsize=8)
    fig.tight_layout()
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
    ax.set(xlabel="true return", ylabel="learned return (standardised reward, summed)",
           title=f"{title}\nreward extrapolation, Pearson r = {r:.3f} over demonstrations and final-policy rollouts "
                 f"(eval/return_correlation)")
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
    if history.get("train/learned_return"):
        ax2 = ax.twinx()
        steps, values = zip(*history["train/learned_return"], strict=True)
        ax2.plot(steps, values, color="tab:green", alpha=0.6, lw=1, label="policy: learned return")
        ax2.set_ylabel("learned return", color="tab:green")
        ax2.legend(loc="lower right", fontsize=8)
    _finish(fig, ax, path, legend_loc="upper left")
