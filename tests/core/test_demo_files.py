from __future__ import annotations

import numpy as np
import pytest

from core.demo_files import DemoFileError, load_demos, save_demos
from core.types import Trajectory


def demos() -> list[Trajectory]:
    rng = np.random.default_rng(0)
    return [Trajectory(rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 2, n),
                       np.ones(n, np.float32)) for n in (3, 7, 5)]


def test_round_trip_keeps_trajectories_and_scores(tmp_path) -> None:
    save_demos(tmp_path / "d.npz", demos(), np.array([3.0, 7.0, 5.0]))
    trajs, scores = load_demos(tmp_path / "d.npz")
    assert [len(t) for t in trajs] == [3, 7, 5]
    np.testing.assert_array_equal(trajs[1].obs, demos()[1].obs)
    np.testing.assert_array_equal(scores, [3.0, 7.0, 5.0])


def test_explicit_ranks_override_returns(tmp_path) -> None:
    d = demos()
    np.savez(tmp_path / "r.npz", obs=np.concatenate([t.obs for t in d]), lengths=[3, 7, 5], ranks=[2, 0, 1])
    trajs, scores = load_demos(tmp_path / "r.npz")
    assert np.argmax(scores) == 1 and np.argmin(scores) == 0


def test_garbage_file_is_named(tmp_path) -> None:
    bad = tmp_path / "garbage.npz"
    bad.write_bytes(b"this is not an npz archive")
    with pytest.raises(DemoFileError, match="garbage.npz"):
        load_demos(bad)
    with pytest.raises(DemoFileError, match="does not exist"):
        load_demos(tmp_path / "missing.npz")


def test_inconsistent_arrays_name_the_field(tmp_path) -> None:
    np.savez(tmp_path / "a.npz", obs=np.zeros((10, 4)), lengths=[3, 3])
    with pytest.raises(DemoFileError, match="'lengths'"):
        load_demos(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", obs=np.zeros((6, 4)), lengths=[3, 3], rewards=np.zeros(5))
    with pytest.raises(DemoFileError, match="'rewards' has 5 rows"):
        load_demos(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", obs=np.zeros((6, 4)), lengths=[3, 3])
    with pytest.raises(DemoFileError, match="needs 'rewards', 'returns' or 'ranks'"):
        load_demos(tmp_path / "c.npz")


def test_single_arrays_and_empty_archives_are_named(tmp_path) -> None:
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(DemoFileError, match=r"one.npy holds a single array"):
        load_demos(tmp_path / "one.npy")
    np.savez(tmp_path / "empty.npz", obs=np.zeros((0, 4)), lengths=np.zeros(0, int), returns=np.zeros(0))
    with pytest.raises(DemoFileError, match=r"empty.npz: 'lengths' must list at least 2"):
        load_demos(tmp_path / "empty.npz")


def test_returns_without_rewards_are_the_true_returns(tmp_path) -> None:
    np.savez(tmp_path / "r.npz", obs=np.zeros((6, 4)), lengths=[2, 4], returns=[10.0, 3.0])
    trajs, scores = load_demos(tmp_path / "r.npz")
    assert [t.true_return for t in trajs] == [10.0, 3.0]
