"""Artifacts round-trip: what a stage saves, the next stage or another run loads back unchanged; one made for
another task is refused naming both; the data order of a resumed fit is the uninterrupted one's."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from core.artifacts import find_policy, load_policy, load_reward, save_policy, save_reward
from core.compat import IncompatibleError
from core.interfaces import SavedPolicy
from core.run import ResumableSampler, RunContext
from core.tracking import NullTracker
from plugins.envs.atari import AtariEnv
from plugins.envs.gym import GymEnv
from plugins.envs.text import TextEnv
from plugins.policies.cnn import actor_critic_for
from plugins.policies.text import LoraSettings, build_text_policy, load_text_policy
from plugins.rewards.trex import TREX
from tests.plugins.test_trex import ranked_set


def test_control_policies_load_back_acting_the_same(tmp_path: Path) -> None:
    for env in (GymEnv("Pendulum-v1", "pendulum"), AtariEnv("Breakout")):
        policy = actor_critic_for(env.observation_space, env.action_space, (32, 16), "relu", normalize_obs=True)
        obs = np.stack([env.observation_space.sample() for _ in range(5)])
        policy.fit_normalization(obs)
        saved = save_policy(policy, tmp_path / env.name / "checkpoints" / "policy", env)
        assert (tmp_path / env.name / "checkpoints" / "policy.pt").is_file()
        assert find_policy(tmp_path / env.name) == saved  # a run's folder finds it
        loaded = load_policy(saved, env)
        np.testing.assert_array_equal(loaded.act(obs, deterministic=True), policy.act(obs, deterministic=True))


def test_a_policy_for_another_task_is_refused_naming_both(tmp_path: Path) -> None:
    cartpole, hopper = GymEnv("CartPole-v1", "cartpole"), GymEnv("Hopper-v5", "hopper")
    policy = actor_critic_for(cartpole.observation_space, cartpole.action_space)
    saved = save_policy(policy, tmp_path / "policy", cartpole)
    with pytest.raises(IncompatibleError, match=r"env=cartpole .*Discrete\(2\).*this run's env=hopper has .*\(3,\)"):
        load_policy(saved, hopper)


def test_trex_reward_loads_back_scoring_the_same(tmp_path: Path) -> None:
    env = GymEnv("Pendulum-v1", "pendulum")
    prefs = ranked_set()
    reward = TREX(num_pairs=64, ensemble_size=2, hidden_sizes=(16,), batch_size=8, min_snippet_length=10,
                  max_snippet_length=20)
    reward.fit(prefs, env, RunContext(0, tmp_path, NullTracker(), progress=False))
    save_reward(reward, tmp_path / "reward", env, "plugins.rewards.trex.TREX")
    again = TREX(ensemble_size=2, hidden_sizes=(16,))
    load_reward(again, tmp_path / "reward", env, "plugins.rewards.trex.TREX", "reward.init")
    obs = np.concatenate([t.obs for t in prefs.items])
    np.testing.assert_array_equal(again.reward(obs), reward.reward(obs))
    with pytest.raises(IncompatibleError, match="holds a plugins.rewards.trex.TREX reward model; this run's reward"):
        load_reward(again, tmp_path / "reward", env, "plugins.rewards.drex.DREX", "reward.init")


def test_a_language_model_with_lora_is_a_save_pretrained_folder(tmp_path: Path, tiny_lm_dir: str) -> None:
    from transformers import AutoModelForCausalLM

    env = TextEnv(model=tiny_lm_dir, max_new_tokens=6)
    policy = build_text_policy(tiny_lm_dir, 6, lora=LoraSettings(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # move the adapters away from their zero start
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    saved = save_policy(policy, tmp_path / "checkpoints" / "policy", env)
    folder = tmp_path / "checkpoints" / "policy"
    assert (folder / "adapter" / "adapter_config.json").is_file() and (folder / "rexlab.yaml").is_file()
    ids = torch.tensor([[1, 2, 3, 4]])
    plain = AutoModelForCausalLM.from_pretrained(folder)  # the merged weights, without rexlab
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, policy.lm(ids).logits, atol=1e-4, rtol=1e-4)
    loaded = load_policy(saved, env)
    rollout, texts = loaded.sample(["A film"] * 3, seed=0)
    assert len(texts) == 3 and (loaded.log_ratio(rollout) != 0).any()  # measured against its reference
    assert isinstance(loaded, type(policy)) and TextEnv(model=str(folder)).model == str(folder)
    reference = load_text_policy(str(folder), tiny_lm_dir, 6)
    assert reference.origin == str(folder)


def test_a_saved_policy_path_without_a_manifest_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no saved policy or model there"):
        load_policy(SavedPolicy(tmp_path / "nothing"), GymEnv("CartPole-v1", "cartpole"))


def test_the_resumable_sampler_draws_as_torch_does_and_resumes_part_way() -> None:
    torch.manual_seed(3)
    expected = [list(DataLoader(range(10), batch_size=3, shuffle=True)) for _ in range(2)]
    torch.manual_seed(3)
    sampler = ResumableSampler(10)
    got = [list(DataLoader(range(10), batch_size=3, sampler=sampler)) for _ in range(2)]
    assert [[b.tolist() for b in epoch] for epoch in got] == [[b.tolist() for b in epoch] for epoch in expected]
    first = ResumableSampler(10)
    taken = iter(first)
    head = [next(taken) for _ in range(6)]
    state = first.state_dict()
    again = ResumableSampler(10)
    again.load_state_dict(state)
    assert head + list(again) == list(torch.randperm(10, generator=torch.Generator().manual_seed(state["seed"])))
    assert len(list(again)) == 10  # the next epoch is whole


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Hopper-v5"])
def test_a_gym_vector_env_snapshot_continues_exactly(env_id: str) -> None:
    """Episodes in progress, the random streams of resets, MuJoCo's simulator state: all continue as they were."""
    env = GymEnv(env_id, env_id)
    envs = env.make_vec(2)
    envs.reset(seed=0)
    for _ in range(7):
        envs.step(envs.action_space.sample())
    copy = env.restore(env.snapshot(envs))
    for _ in range(300):  # through several episode ends and resets
        a = envs.action_space.sample()
        for x, y in zip(envs.step(a), copy.step(a), strict=True):
            if isinstance(x, np.ndarray):
                np.testing.assert_array_equal(x, y)
    assert isinstance(copy, gym.vector.VectorEnv)


def test_atari_cannot_snapshot_its_episodes() -> None:
    env = AtariEnv("Breakout")
    assert env.snapshot(env.make_vec(1)) is None  # the C++ vector env: PPO warns and restarts its episodes
