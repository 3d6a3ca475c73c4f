"""Does a preference model learn each axis of the assistant task from gold-labelled pairs? (docs/results.md, CAI)

    .venv/bin/python docs/cai_preference_probe.py [--answers 4] [--epochs 1 4] [--only red_team]
    .venv/bin/python docs/cai_preference_probe.py --answers 8 --epochs       # the bag-of-words ceiling alone
    .venv/bin/python docs/cai_preference_probe.py --model HuggingFaceTB/SmolLM2-135M-Instruct --pooling last --lr 3e-5

Samples the base model (experiment=cai's env.model, T=1, its 24-token answers) `--answers` times for each training
prompt and 4 times for each held-out one, labels every pair of answers to one prompt by the gold
(plugins/assistant_gold.py: harmlessness on red-team prompts, helpfulness on helpful ones; pairs of equal gold left
out), trains reward=bradley_terry (its defaults, but `--epochs` and any of `--model --pooling --lr`) on the
training prompts' pairs (all, or only those of one kind with --only), and prints its accuracy on the held-out
prompts' pairs of each kind against the gold order, over all pairs and over those whose gold differs by more than
0.05. Run with OMP_NUM_THREADS=1 beside other jobs.

Beside it, a bag-of-words ceiling: a logistic regression on the difference of the two answers' word counts, fit to
one kind's training pairs at a time, scored on the same held-out pairs. The gold of harmlessness is lexical (VADER's
negative words, an n-gram classifier), so a model of the answers' words is the form it takes; where this model cannot
order held-out pairs either, the training pairs do not carry the signal, whatever the preference model. It also
prints how many of the negative words (VADER's lexicon) in held-out red-team answers occur in a red-team training
answer.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli import compose_run  # noqa: E402
from core.evaluation import true_order_accuracy  # noqa: E402
from core.pipeline import build  # noqa: E402
from core.run import RunContext  # noqa: E402
from core.tracking import NullTracker  # noqa: E402
from core.types import Preferences, Response, same_prompt_pairs  # noqa: E402
from plugins.assistant_gold import RED_TEAM  # noqa: E402
from plugins.policies.text import build_text_policy  # noqa: E402
from plugins.reviews import vader  # noqa: E402
from plugins.rewards.bradley_terry import BradleyTerry  # noqa: E402

KINDS = (RED_TEAM, "helpful")


def answers(env, prompts: list[str], per_prompt: int, seed: int) -> list[Response]:  # type: ignore[no-untyped-def]
    """`per_prompt` answers of env.model to each prompt, each with its gold."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_text_policy(env.model, env.max_new_tokens, 1.0, batch_size=32, reference=False)
    asked = [p for p in prompts for _ in range(per_prompt)]
    _, texts = model.sample(env.present(asked), seed=seed)
    return [Response(p, t, gold=float(g)) for p, t, g in zip(asked, texts, env.gold(asked, texts), strict=True)]


def gold_pairs(items: list[Response], min_gap: float = 0.0) -> np.ndarray:
    """Every two answers to one prompt whose gold differs by more than min_gap, the higher first (P, 2)."""
    gold = np.array([item.gold for item in items], dtype=float)
    pairs = [(i, j) if gold[i] > gold[j] else (j, i) for i, j in same_prompt_pairs(items)
             if abs(gold[i] - gold[j]) > min_gap]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def bag_of_words_scores(train: list[Response], pairs: np.ndarray, held: list[Response]) -> np.ndarray:
    """Fit P(first better) = sigmoid(w . (counts(first) - counts(second))) to the gold-ordered training pairs (both
    orders, L2 penalty C=0.1, words seen in two answers or more); return w . counts of each held-out answer (N,)."""
    from scipy.sparse import vstack
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    words = CountVectorizer(min_df=2).fit([r.text for r in train])
    counts = words.transform([r.text for r in train])
    diff = counts[pairs[:, 0]] - counts[pairs[:, 1]]
    fit = LogisticRegression(C=0.1, fit_intercept=False, max_iter=2000).fit(
        vstack([diff, -diff]), np.r_[np.ones(len(pairs)), np.zeros(len(pairs))])
    return np.asarray(words.transform([r.text for r in held]) @ fit.coef_[0]).ravel()


def negative_words(text: str) -> list[str]:
    """The words of the text that VADER's lexicon scores below 0."""
    lexicon = vader().lexicon
    return [w for w in (t.strip(".,!?;:\"'()").lower() for t in text.split()) if lexicon.get(w, 0.0) < 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=4, help="answers sampled per training prompt")
    parser.add_argument("--epochs", type=int, nargs="*", default=[1, 4],
                        help="reward.epochs, one model each (none: the bag-of-words ceiling alone)")
    parser.add_argument("--only", choices=KINDS, help="train on this kind's pairs alone")
    parser.add_argument("--model", help="reward.model (default: the preset's sentence encoder)")
    parser.add_argument("--pooling", choices=("mean", "last"), help="reward.pooling (last for a causal LM)")
    parser.add_argument("--lr", type=float, help="reward.lr")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg, _ = compose_run("experiment=cai")
    env = build(cfg.env)
    start = time.perf_counter()
    train = answers(env, env.train_prompts, args.answers, args.seed + 1)
    held = answers(env, env.eval_prompts, 4, args.seed + 2)
    print(f"sampled {len(train)} + {len(held)} answers in {time.perf_counter() - start:.0f} s")
    kind_of = [env.prompt_kinds.get(r.prompt) for r in train]
    pairs = gold_pairs(train)
    of_kind = {kind: pairs[[kind_of[i] == kind for i in pairs[:, 0]]] for kind in KINDS}
    for kind, mine in of_kind.items():
        gaps = np.array([train[i].gold - train[j].gold for i, j in mine])  # type: ignore[operator]
        print(f"{kind}: {len(mine)} training pairs, median gold gap {np.median(gaps):.3f}")
    fit_pairs = of_kind[args.only] if args.only else pairs
    held_gold = np.array([r.gold for r in held])
    held_kind_of = [env.prompt_kinds.get(r.prompt) for r in held]
    held_pairs = {gap: gold_pairs(held, gap) for gap in (0.0, 0.05)}
    measured = []  # (label, held-out pairs) per kind, all pairs and those of a gold gap over 0.05
    for kind in KINDS:
        for gap, found in held_pairs.items():
            measured.append((f"{kind}{' (gap > 0.05)' if gap else ''}",
                             found[[held_kind_of[i] == kind for i in found[:, 0]]]))
    red_held = [w for r, k in zip(held, held_kind_of, strict=True) if k == RED_TEAM for w in negative_words(r.text)]
    seen = {w for r, k in zip(train, kind_of, strict=True) if k == RED_TEAM for w in negative_words(r.text)}
    share = np.mean([w in seen for w in red_held]) if red_held else float("nan")
    print(f"negative words in held-out red-team answers: {len(red_held)}, {share:.2f} of them in a red-team training "
          "answer")
    cells = []
    for kind, mine in of_kind.items():
        scores = bag_of_words_scores(train, mine, held)
        cells += [f"{label} {true_order_accuracy(found, scores, held_gold):.2f} of {len(found)}"
                  for label, found in measured if label.startswith(kind)]
    print("bag of words, one model per kind: " + ", ".join(cells))
    chosen = {k: v for k, v in (("model", args.model), ("pooling", args.pooling), ("lr", args.lr)) if v is not None}
    for epochs in args.epochs:
        model = BradleyTerry(epochs=epochs, **chosen)
        with tempfile.TemporaryDirectory() as folder:
            run = RunContext(args.seed, Path(folder), NullTracker(), progress=False)
            model.fit(Preferences(train, fit_pairs), None, run)
        learned = model.score([r.prompt for r in held], [r.text for r in held])
        cells = [f"{label} {true_order_accuracy(found, learned, held_gold):.2f} of {len(found)}"
                 for label, found in measured]
        print(f"epochs {epochs}, trained on {args.only or 'both kinds'}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
