"""env=text's plots: gold reward against KL over training (plots/gold_vs_kl.png), and, for a task scored for
harmlessness and helpfulness (experiment=cai), where each model of the run lands on those two axes
(plots/harmless_vs_helpful.png)."""

from __future__ import annotations

from pathlib import Path

AXES = {"harmlessness", "helpfulness"}
# The models of one run on the two axes: the metric prefix of each, and its label
STAGES = (("base_", "base model, plain prompt"), ("few_shot_", "base model, few-shot prompt"),
          ("ref_", "reference (where RL started; SL-CAI in experiment=cai)"), ("", "final policy (RL-CAI)"))


def stage_points(metrics: dict[str, float]) -> list[tuple[str, float, float]]:
    """(label, helpfulness, harmlessness) of each model the metrics measured (eval/<prefix>harmlessness, ...)."""
    return [(label, metrics[f"eval/{p}helpfulness"], metrics[f"eval/{p}harmlessness"]) for p, label in STAGES
            if f"eval/{p}helpfulness" in metrics and f"eval/{p}harmlessness" in metrics]


def _figure(width: float = 6.5, height: float = 4.5):  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(width, height))


def harmless_vs_helpful(path: Path, points: list[tuple[str, float, float]], name: str) -> None:
    """One marker per model (label, helpfulness, harmlessness), joined in pipeline order by an arrow path."""
    plt, fig, ax = _figure()
    markers = ["o", "s", "^", "*"]
    for k, (label, x, y) in enumerate(points):
        ax.scatter([x], [y], s=140 if markers[k % 4] == "*" else 70, marker=markers[k % 4], zorder=4, label=label)
    for (_, x0, y0), (_, x1, y1) in zip(points[1:], points[2:], strict=False):  # few-shot -> reference -> final
        ax.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "->", "color": "tab:gray", "lw": 1})
    ax.set(xlabel="helpfulness (held-out helpful prompts; MiniLM relevance, 0 if refused)",
           ylabel="harmlessness (held-out red-team prompts)", title=f"{name}\nharmlessness against helpfulness")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gold_vs_kl(path: Path, history: dict[str, list[tuple[int, float]]], final: dict[str, float], name: str,
               gold: str = "VADER compound") -> None:
    """Gold reward against KL to the reference over training: each iteration's training batch, the
    held-out evaluations, the final one, and the reference's gold reward (KL 0)."""
    plt, fig, ax = _figure()
    if history.get("train/kl") and history.get("train/true_return"):
        kl = dict(history["train/kl"])
        points = [(kl[s], g) for s, g in history["train/true_return"] if s in kl]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, "-o", ms=3, lw=1, alpha=0.6, color="tab:orange", label="training batches")
    if history.get("eval/kl_to_ref") and history.get("eval/gold_reward_mean"):
        eval_kl = [v for _, v in history["eval/kl_to_ref"]]
        eval_gold = [v for _, v in history["eval/gold_reward_mean"]][: len(eval_kl)]
        ax.scatter(eval_kl[: len(eval_gold)], eval_gold, color="tab:blue", zorder=4, label="held-out evaluations")
    ax.scatter([final["eval/kl_to_ref"]], [final["eval/gold_reward_mean"]], color="black", marker="*", s=120,
               zorder=5, label="final policy")
    ax.axhline(final["eval/ref_gold_reward_mean"], color="tab:gray", ls="--", lw=1, label="reference policy")
    ax.set(xlabel="KL(policy || reference), nats per response", ylabel=f"gold reward ({gold})",
           title=f"{name}\ngold reward against KL over training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
