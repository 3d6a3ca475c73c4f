"""docs/label_noise.py: the label-noise study's records from sweep folders, its table and its plot."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[1] / "docs"
sys.path.append(str(DOCS))  # (the script imports its sibling text_results, as when run from docs/)
spec = importlib.util.spec_from_file_location("label_noise_doc", DOCS / "label_noise.py")
assert spec is not None and spec.loader is not None
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def job(sweep: Path, number: int, overrides: str, metrics: dict[str, float], env: str = "pendulum") -> dict:
    folder = sweep / str(number)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 0, "metrics": metrics}) + "\n")
    (folder / "checkpoints" / "evaluation.json").write_text(json.dumps({}))
    (folder / "config.yaml").write_text(f"env:\n  name: {env}\n")
    (folder / "main.log").write_text("[2026-12-07 10:00:00,000][x][INFO] - start\n"
                                     "[2026-12-07 10:01:30,000][x][INFO] - done\n")
    return {"job": number, "overrides": overrides, "status": "FINISHED", "output_dir": str(folder)}


def test_seeds_of_a_setting_are_one_row_and_the_plot_is_drawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    monkeypatch.setattr(study, "RECORDS", tmp_path / "records.csv")
    sweep = tmp_path / "sweep"
    jobs = [job(sweep, k, f"preference.agreement=0.6 preference.annotators=1 seed={k}",
                {"reward/val_true_pair_accuracy": 0.8 + 0.1 * k, "eval/true_return_mean": -500.0 + k,
                 "demos/best_true_return": -800.0, "preference/label_agreement": 0.6})
            for k in range(2)]
    jobs.append(job(sweep, 2, "preference.agreement=0.72 preference.annotators=1 policy=dpo seed=0 "
                              "experiment=label_noise_text",
                    {"dpo/val_true_pair_accuracy": 0.55, "reward/val_true_pair_accuracy": 0.99,
                     "eval/gold_reward_mean": 0.3, "eval/ref_gold_reward_mean": 0.2, "eval/kl_to_ref": 2.0}))
    (sweep / "jobs.jsonl").write_text("".join(json.dumps(j) + "\n" for j in jobs))
    monkeypatch.setattr(sys, "argv", ["label_noise.py", str(sweep), "--plot", "study"])
    monkeypatch.setattr(study, "HERE", tmp_path)
    study.main()
    records = study.read_records()
    assert sorted(records) == [("pendulum", "T-REX", "0.6", "1", "0"), ("pendulum", "T-REX", "0.6", "1", "1"),
                               ("text", "dpo", "0.72", "1", "0")]
    assert records[("text", "dpo", "0.72", "1", "0")]["true_accuracy"] == "0.55"  # DPO's own, not a reward model's
    table = study.table(records)
    assert "| pendulum | T-REX | 1 | 0.6 | 2 | 0.600 ± 0.000 | 0.850 ± 0.050 | -499.500 ± 0.500 | -800.000 ± 0.000 |" \
        in table
    assert "| text | dpo | 1 | 0.72 | 1 | - | 0.550 | 0.300 | 0.200 | 2.000 | 1.500 |" in table
    assert (tmp_path / "img" / "study.png").stat().st_size > 10_000
