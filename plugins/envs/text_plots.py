"""env=text's plot of one run: gold reward against KL over training (plots/gold_vs_kl.png)."""

from __future__ import annotations

from pathlib import Path


def _figure(width: float = 6.5, height: float = 4.5):  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(width, height))


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
