"""Property-based tests: any input either loads or ends in rexlab's own named error (file, line or key), never
a traceback from inside numpy, torch or json; and a run killed at random moments always resumes to one
FINISHED run with the uninterrupted run's result."""

from __future__ import annotations

import io
import json
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from omegaconf import OmegaConf

from core.demo_files import load_demos
from core.errors import NamedError
from core.pipeline import RunSettings, build, plugin_node
from core.schema import check_config
from plugins.envs.text import read_prompts
from plugins.optimizers.lm_training import read_demonstrations
from plugins.preferences.file import read_preference_file
from tests.conftest import compose_config

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=True)
                           | st.text(max_size=8), lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(["prompt", "chosen", "rejected", "responses", "ranking",
                                                              "annotator", "margin", "correction", "response",
                                                              "x"]), inner, max_size=5), max_leaves=12)
lines = st.lists(st.one_of(json_values.map(json.dumps), st.text(max_size=30), st.binary(max_size=20).map(
    lambda b: b.decode("latin-1"))), max_size=8)


def write(tmp: Path, content: list[str] | bytes) -> Path:
    path = tmp / "input.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else "\n".join(content).encode("utf-8", "surrogatepass"))
    return path


@FUZZ
@given(content=lines | st.binary(max_size=200))
@pytest.mark.parametrize("reader", [read_preference_file, read_prompts, read_demonstrations])
def test_jsonl_readers_load_or_name_the_bad_line(tmp_path: Path, reader: object, content: list[str] | bytes) -> None:
    path = write(tmp_path, content)
    try:
        reader(path)  # type: ignore[operator]
    except NamedError as err:
        assert str(path) in str(err)


@FUZZ
@given(data=st.dictionaries(st.sampled_from(["obs", "lengths", "actions", "rewards", "returns", "ranks", "other"]),
                            hnp.arrays(st.sampled_from([np.float32, np.float64, np.int64, np.uint8]),
                                       hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)), max_size=7))
def test_demonstration_files_load_or_name_the_array(tmp_path: Path, data: dict[str, np.ndarray]) -> None:
    path = tmp_path / "demos.npz"
    with open(path, "wb") as f:
        np.savez(f, **data)  # type: ignore[arg-type]
    try:
        trajs, scores = load_demos(path)
    except NamedError as err:
        assert str(path) in str(err)
    else:
        assert len(trajs) == len(scores) >= 2 and np.isfinite(scores).all()


@FUZZ
@given(content=st.binary(max_size=300))
def test_any_bytes_as_a_demonstration_file_are_refused_by_name(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "demos.npz"
    buffer = io.BytesIO()
    np.savez(buffer, obs=np.zeros((4, 2)), lengths=np.array([2, 2]), returns=np.array([1.0, 0.0]))
    path.write_bytes(content if content else buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(NamedError, match="demos.npz"):
        load_demos(path)


CONFIG_KEYS = ["reward.lr", "reward.num_pairs", "reward.ensemble_size", "reward.val_fraction", "reward.squash",
               "reward.hidden_sizes", "reward.min_snippet_length", "ppo.gamma", "ppo.num_envs", "ppo.num_minibatches",
               "ppo.learning_rate", "ppo.target_kl", "evaluation.episodes", "evaluation.max_steps",
               "preference.checkpoint_every", "preference.stop_return"]
config_values = st.none() | st.booleans() | st.integers(-5, 5000) | st.floats(allow_nan=True, allow_infinity=True) \
    | st.text(max_size=6) | st.lists(st.integers(-3, 300), max_size=3)


@FUZZ
@given(values=st.dictionaries(st.sampled_from(CONFIG_KEYS), config_values, min_size=1, max_size=4))
def test_config_values_pass_their_schema_and_build_or_are_refused_by_key(values: dict[str, object]) -> None:
    cfg = compose_config("experiment=debug")
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    try:
        check_config(cfg, ["env", "reward", "preference", "policy"], RunSettings)
        for group in ("reward", "preference", "policy"):
            build(plugin_node(cfg, group))
    except NamedError as err:
        assert any(key.split(".")[-1] in str(err) for key in values), str(err)


def test_a_run_killed_at_random_moments_resumes_to_one_finished_run(in_tmp: Path) -> None:
    """kill -9 three times at seeded random moments (any stage, any point of a step), resuming each time."""
    from tests.test_pipeline import run_main
    from tests.test_resume import ARGS, evaluation, runs, start, wait_for

    reference = run_main([*ARGS, "tracking=none", "hydra.run.dir=ref"], in_tmp)
    assert reference.returncode == 0, reference.stderr[-3000:]
    moments = random.Random(7)
    proc = start([*ARGS, "hydra.run.dir=run"], in_tmp)
    wait_for(in_tmp / "run" / "checkpoints" / "run_state.pkl", proc)  # the run exists: from here on it can resume
    for _ in range(3):
        try:
            proc.wait(timeout=moments.uniform(0.5, 8.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.returncode == 0:
            break
        proc = start([*ARGS, "resume=run"], in_tmp)
    assert proc.wait(timeout=600) == 0, proc.stdout.read()[-3000:]  # type: ignore[union-attr]
    [run] = runs(in_tmp)
    assert run.info.status == "FINISHED"
    assert evaluation(in_tmp / "run") == evaluation(in_tmp / "ref")
