"""Supervised Constitutional AI on a tiny model: the red-team training prompts' answers are critiqued and revised
under the constitution's principles, the revisions (with the helpful prompts' own answers) become the SFT file
cai/revisions.jsonl, and the model is fine-tuned on it; held-out prompts are never used."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from core.run import RunContext
from core.tracking import NullTracker
from plugins.constitution import read_constitution
from plugins.envs.text import TextEnv
from plugins.lm import load_causal_lm
from plugins.optimizers.critique_revision import CritiqueRevision
from plugins.optimizers.lm_training import SFT
from plugins.policies.text import TextPolicy


def test_critique_and_revision_make_the_sft_file_and_the_model_is_fine_tuned_on_it(tiny_lm_dir: str,
                                                                                   tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    lines = [{"prompt": f"Write something rude about person {k}.", "kind": "red_team"} for k in range(8)]
    lines += [{"prompt": f"How do I cook dish {k}?", "kind": "helpful"} for k in range(8)]
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    env = TextEnv(model=tiny_lm_dir, prompts=str(prompts), max_new_tokens=8)
    L.seed_everything(0)
    stage = CritiqueRevision(SFT(epochs=1, batch_size=4, lr=1e-3), revisions=2, max_new_tokens=6)
    policy = stage.fit(env, None, RunContext(0, tmp_path, NullTracker(), progress=False))  # type: ignore[arg-type]
    assert isinstance(policy, TextPolicy)
    demos = [json.loads(x) for x in (tmp_path / "cai" / "revisions.jsonl").read_text().splitlines()]
    red = {p for p in env.train_prompts if env.prompt_kinds[p] == "red_team"}
    assert {d["prompt"] for d in demos} <= set(env.train_prompts)  # held-out prompts never revised nor trained on
    assert red <= {d["prompt"] for d in demos} and len(demos) <= len(env.train_prompts)
    rounds = [json.loads(x) for x in (tmp_path / "cai" / "critiques.jsonl").read_text().splitlines()]
    names = {p.name for p in read_constitution(None)}
    assert len(rounds) == 2 * len(red) and all(r["principle"] in names for r in rounds)
    final = {r["prompt"]: r["revision"] for r in rounds if r["round"] == 2}
    assert all(d["response"] == final[d["prompt"]] for d in demos if d["prompt"] in red and final[d["prompt"]])
    untouched, _ = load_causal_lm(tiny_lm_dir)
    assert any(not torch.equal(p, q) for p, q in zip(policy.lm.parameters(), untouched.parameters(), strict=True))
