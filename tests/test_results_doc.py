"""docs/results.py: committed run records, merged with a store's newer runs, rendered as the results tables."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[1] / "docs"
spec = importlib.util.spec_from_file_location("results_doc", DOCS / "results.py")
assert spec is not None and spec.loader is not None
results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results)


def record(env: str, method: str, seed: str, ret: float, date: str, **extra: str) -> dict[str, str]:
    return {"env": env, "method": method, "seed": seed, "true_return": str(ret), "date": date,
            "command": f"python main.py {method}", "note": "", **extra}


def test_newer_runs_replace_older_records_and_the_file_round_trips(tmp_path: Path) -> None:
    records = {("hopper", "T-REX", "0"): record("hopper", "T-REX", "0", 100.0, "2026-11-24", best_demo="50")}
    new = {("hopper", "T-REX", "0"): record("hopper", "T-REX", "0", 200.0, "2026-12-01 20:00", best_demo="60"),
           ("hopper", "D-REX", "0"): record("hopper", "D-REX", "0", 90.0, "2026-12-01 21:00", best_demo="55",
                                            bc_clone_return="40")}
    assert sorted(results.merge(records, new)) == [("hopper", "D-REX", "0"), ("hopper", "T-REX", "0")]
    older = {("hopper", "T-REX", "0"): record("hopper", "T-REX", "0", 1.0, "2026-11-01")}
    assert results.merge(records, older) == [] and records[("hopper", "T-REX", "0")]["true_return"] == "200.0"
    path = tmp_path / "runs.csv"
    results.write_records(path, records)
    assert results.read_records(path) == {k: {f: r.get(f, "") for f in results.FIELDS} for k, r in records.items()}


def test_the_tables_derive_best_demo_and_the_clone_and_star_differing_demos(tmp_path: Path) -> None:
    records = {("hopper", "T-REX", "0"): record("hopper", "T-REX", "0", 200.0, "d", best_demo="60"),
               ("hopper", "D-REX", "0"): record("hopper", "D-REX", "0", 90.0, "d", best_demo="55",
                                                bc_clone_return="40"),
               ("hopper", "T-REX", "1"): record("hopper", "T-REX", "1", 300.0, "d", best_demo="70")}
    text = results.render(records, "# Results", tmp_path)
    assert "| hopper | 65.0 ± 5.0 (n=2) | - | 40.0 ± 0.0 (n=1) | 250.0 ± 50.0 (n=2) | 90.0 ± 0.0 (n=1) | - |" in text
    assert "| hopper | 0 | 60.0 / 55.0 * | - | 40.0 | 200.0 | 90.0 | - |" in text  # T-REX's demo counts, both shown
    assert "- hopper, T-REX: `python main.py T-REX` with `seed=` 0, 1" in text


def test_a_bad_record_is_named_by_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    results.write_records(path, {("cartpole", "BC", "0"): record("cartpole", "BC", "0", 5.0, "d")})
    path.write_text(path.read_text() + "cartpole,PPO,1,7.0" + "," * (len(results.FIELDS) - 4) + "\n")
    with pytest.raises(SystemExit, match=r"runs.csv:3: .*method"):
        results.read_records(path)


def test_the_committed_records_render_without_a_store(tmp_path: Path) -> None:
    records = results.read_records(DOCS / "results_runs.csv")
    assert {env for env, _, _ in records} >= {"cartpole", "hopper", "halfcheetah"}
    assert "## Per seed" in results.render(records, "", tmp_path)
