from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from core.compat import IncompatibleError, check_compatible
from core.interfaces import Capabilities, Environment, EnvReward
from plugins.envs.gym import GymEnv
from plugins.optimizers.ppo import PPO
from plugins.preferences.learner_checkpoints import LearnerCheckpoints
from plugins.rewards.trex import TREX


class TokenEnv(Environment):
    """An environment observing text, to meet control plugins that take vectors and images."""

    name, observation_kind, action_kind = "tokens", "text", "token"

    def make_vec(self, num_envs: int) -> gym.vector.VectorEnv:
        raise AssertionError("the check must refuse before any environment is made")

    @property
    def observation_space(self) -> gym.Space:
        return gym.spaces.Box(0, 50_000, (16,), np.int64)

    @property
    def action_space(self) -> gym.Space:
        return gym.spaces.Discrete(4)


CHOICES = {"env": "tokens", "reward": "trex", "preference": "learner_checkpoints", "policy": "ppo"}
CLASSES = {"reward": TREX, "preference": LearnerCheckpoints, "policy": PPO}


def test_compatible_combination_passes() -> None:
    check_compatible(GymEnv("CartPole-v1", "cartpole"), {**CHOICES, "env": "cartpole"}, CLASSES)


def test_incompatible_combination_names_both_parts() -> None:
    with pytest.raises(IncompatibleError) as err:
        check_compatible(TokenEnv(), CHOICES, CLASSES)
    message = str(err.value)
    assert "policy=ppo" in message and "env=tokens" in message and "text" in message
    assert "try" in message


def test_a_policy_needing_demonstrations_needs_a_source_that_has_them() -> None:
    class Cloner(PPO):
        capabilities = Capabilities(needs_demonstrations=True)

    class Labeler(LearnerCheckpoints):
        capabilities = Capabilities(provides_demonstrations=False)

    with pytest.raises(IncompatibleError, match="learns from demonstrations.*preference=labeler"):
        check_compatible(GymEnv("CartPole-v1", "cartpole"),
                         {**CHOICES, "env": "cartpole", "policy": "cloner", "preference": "labeler"},
                         {"reward": EnvReward, "preference": Labeler, "policy": Cloner})


def test_refusing_drex_on_noise_injection_says_what_does_that() -> None:
    from plugins.preferences.noise_injection import NoiseInjection
    from plugins.rewards.drex import DREX

    with pytest.raises(IncompatibleError, match="reward=trex preference=noise_injection is D-REX"):
        check_compatible(GymEnv("CartPole-v1", "cartpole"),
                         {**CHOICES, "env": "cartpole", "reward": "drex", "preference": "noise_injection"},
                         {"reward": DREX, "preference": NoiseInjection, "policy": PPO})


def test_online_preferences_need_a_policy_that_calls_back_and_a_reward_that_refits() -> None:
    from plugins.optimizers.bc import BehavioralCloning
    from plugins.preferences.online import OnlinePreferences

    cartpole = GymEnv("CartPole-v1", "cartpole")
    choices = {**CHOICES, "env": "cartpole", "preference": "online"}
    check_compatible(cartpole, choices, {"reward": TREX, "preference": OnlinePreferences, "policy": PPO})
    with pytest.raises(IncompatibleError, match="preference=online asks .* but policy=bc never hands .* policy=ppo"):
        check_compatible(cartpole, {**choices, "policy": "bc"},
                         {"reward": TREX, "preference": OnlinePreferences, "policy": BehavioralCloning})

    class OneShot(TREX):
        capabilities = Capabilities(observations=frozenset({"vector"}), needs_preferences=True, refits=False)

    with pytest.raises(IncompatibleError, match="but reward=oneshot cannot be refit .* use reward=trex"):
        check_compatible(cartpole, {**choices, "reward": "oneshot"},
                         {"reward": OneShot, "preference": OnlinePreferences, "policy": PPO})
    # the true reward gathers no preferences, so the source is never asked
    check_compatible(cartpole, {**choices, "reward": "true"},
                     {"reward": EnvReward, "preference": OnlinePreferences, "policy": PPO})


def test_nested_plugins_are_checked_before_anything_runs() -> None:
    from omegaconf import OmegaConf

    from core.compat import CONF_DIR, check_nested
    from tests.conftest import compose_config

    cartpole = GymEnv("CartPole-v1", "cartpole")
    for overrides in ((), ("reward=drex", "preference=noise_injection"), ("preference=synthetic",)):
        check_nested(compose_config(*overrides), cartpole, {**CHOICES, "env": "cartpole"}, ("reward", "preference"))
    cfg = compose_config()
    cfg.preference.learner = OmegaConf.load(CONF_DIR / "policy" / "bc.yaml")  # a learner that never checkpoints
    with pytest.raises(IncompatibleError, match=r"preference.learner is BehavioralCloning, but LearnerCheckpoints "
                                                r"needs a plugin there that hands its current policy.*: one of "
                                                r"conf/policy/ppo.yaml, as a whole node.*- /policy/ppo@learner"):
        check_nested(cfg, cartpole, {**CHOICES, "env": "cartpole"}, ("preference",))
    drex = compose_config("reward=drex")
    drex.reward.cloner = OmegaConf.load(CONF_DIR / "policy" / "ppo.yaml")  # D-REX clones the demonstrations
    with pytest.raises(IncompatibleError, match=r"reward.cloner is PPO.*learns a policy from demonstrations.*: one "
                                                r"of conf/policy/bc.yaml, as"):
        check_nested(drex, cartpole, {**CHOICES, "env": "cartpole"}, ("reward",))
    with pytest.raises(IncompatibleError, match=r"preference.learner \(PPO\) cannot work with env=tokens"):
        check_nested(compose_config(), TokenEnv(), CHOICES, ("preference",))
