"""Every config option composes and instantiates; unknown options and bad keys are named."""

from __future__ import annotations

import pytest
from hydra.errors import MissingConfigException
from hydra.utils import instantiate

from core.cli import quote_bool_choices
from core.compat import CONF_DIR, IncompatibleError, check_fields, options_of
from core.devices import Devices
from core.interfaces import Environment, Optimizer, PreferenceSource, RewardModel
from core.pipeline import plugin_node
from core.tracking import Tracker
from tests.conftest import compose_config

KINDS = {"env": Environment, "reward": RewardModel, "preference": PreferenceSource, "policy": Optimizer,
         "tracking": Tracker, "trainer": Devices}


def all_options() -> list[tuple[str, str]]:
    return [(group, path.stem) for group in KINDS for path in sorted((CONF_DIR / group).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), all_options())
@pytest.mark.parametrize("experiment", [None, "debug"])
def test_every_option_composes_and_instantiates(group: str, option: str, experiment: str | None,
                                                tmp_path) -> None:
    overrides = [f"{group}={option}"] + ([f"experiment={experiment}"] if experiment else [])
    if group == "preference" and option in ("ranked_demos", "file"):
        overrides.append(f"preference.path={tmp_path / 'data'}")  # read at gather time, not here
    cfg = compose_config(*overrides)
    check_fields(cfg, {group: option}, (group,))  # every key the option's file sets is a field of its class
    obj = instantiate(plugin_node(cfg, group))
    assert isinstance(obj, KINDS[group])


@pytest.mark.parametrize("group", ["reward", "preference"])
def test_per_env_settings_compose_with_every_option(group: str, tmp_path) -> None:
    for option in [o for g, o in all_options() if g == group]:
        extra = [f"preference.path={tmp_path / 'demos.npz'}"] if option in ("ranked_demos", "file") else []
        cfg = compose_config("env=atari", f"{group}={option}", *extra)
        check_fields(cfg, {group: option}, (group,))
        assert isinstance(instantiate(plugin_node(cfg, group)), KINDS[group]), option


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_preset_composes_and_its_parts_instantiate(preset: str) -> None:
    cfg = compose_config(f"experiment={preset}")
    for group in ("reward", "preference", "policy"):
        check_fields(cfg, {group: "preset", "experiment": preset}, (group,))
        assert isinstance(instantiate(plugin_node(cfg, group)), KINDS[group])


def test_presets_hold_the_papers_settings() -> None:
    trex = compose_config("experiment=trex_mujoco")
    assert (trex.reward.ensemble_size, trex.reward.num_pairs, trex.reward.max_snippet_length) == (5, 10000, 40)
    # the reference code's training: 10000 Adam steps of 64 pairs at 1e-4, L2 0.01 (gradient 0.02 w), ReLU
    assert (trex.reward.batch_size, trex.reward.lr, trex.reward.weight_decay, trex.reward.activation) == (
        64, 1e-4, 0.02, "relu")
    assert trex.reward.epochs * trex.reward.num_pairs // trex.reward.batch_size == 10000
    drex = compose_config("experiment=drex_mujoco").reward
    assert (drex.ensemble_size, drex.num_pairs, drex.max_snippet_length) == (3, 5000, 50)
    assert round(drex.epochs * drex.num_pairs / drex.batch_size, -2) == 1000
    for preset in ("trex_mujoco_cpu", "drex_mujoco_cpu"):  # the settings docs/results.md measured
        small = compose_config(f"experiment={preset}").reward
        assert (small.batch_size, small.lr, small.epochs, small.weight_decay, small.activation,
                small.max_snippet_length) == (16, 2e-4, 1, 0.0, "leaky_relu", 40)
    atari = compose_config("experiment=trex_atari")
    assert atari.env.game == "Breakout" and atari.reward.lr == 5e-5 and atari.reward.num_pairs == 6000
    assert (atari.reward.min_snippet_length, atari.reward.max_snippet_length) == (50, 100)
    assert atari.reward.squash == "none" and not atari.reward.fit_offset  # no living bonus (README)
    learner = atari.preference
    assert learner.learner.total_timesteps // learner.checkpoint_every == 12  # 12 demonstrations
    assert list(compose_config("experiment=drex_atari").reward.noise_levels) == [1.0, 0.75, 0.5, 0.25, 0.02]
    for preset in ("trex_atari_cpu", "drex_atari_cpu"):
        small = compose_config(f"experiment={preset}")
        assert small.env.game == "Seaquest" and small.evaluation.max_steps == 10000
        assert small.preference.learner.total_timesteps // small.preference.checkpoint_every == 12
    cpu = compose_config("experiment=drex_mujoco_cpu", "env=halfcheetah")
    assert cpu.env.id == "HalfCheetah-v5" and cpu.policy.total_timesteps < trex.policy.total_timesteps


def test_every_group_has_the_options_design_names() -> None:
    for group, names in {"env": {"cartpole", "pendulum", "mountaincar", "hopper", "halfcheetah", "atari", "text"},
                         "reward": {"true", "trex", "drex", "bradley_terry"},
                         "preference": {"learner_checkpoints", "ranked_demos", "noise_injection", "synthetic", "file",
                                        "reference_samples", "human", "online"},
                         "policy": {"ppo", "bc", "sft", "pretrain", "dpo", "grpo"},
                         "tracking": {"mlflow", "none"}, "trainer": {"cpu", "gpu", "ddp", "fsdp"}}.items():
        assert names <= set(options_of(group)), group


def test_debug_shrinks_budgets_only_where_the_option_has_them() -> None:
    full, debug = compose_config(), compose_config("experiment=debug")
    assert debug.policy.total_timesteps < full.policy.total_timesteps
    assert debug.reward.num_pairs < full.reward.num_pairs
    assert "num_pairs" not in compose_config("experiment=debug", "reward=true").reward
    atari = compose_config("env=atari", "reward=drex", "preference=noise_injection", "experiment=debug")
    assert (atari.reward.ensemble_size, atari.reward.num_pairs, atari.policy.total_timesteps) == (1, 64, 2048)
    assert atari.preference.demonstrations.learner.total_timesteps == 2048  # the CNN's smaller debug budget


def test_env_tuned_ppo_settings_follow_the_env() -> None:
    assert compose_config("env=pendulum").policy.hparams.gamma == 0.9
    assert compose_config("env=cartpole").policy.hparams.gamma == 0.98
    assert compose_config("ppo.gamma=0.5").preference.learner.hparams.gamma == 0.5


def test_unknown_option_names_the_available_ones() -> None:
    with pytest.raises(MissingConfigException) as err:
        compose_config("reward=nope")
    assert "reward/nope" in str(err.value)
    assert "trex" in str(err.value) and "true" in str(err.value)


def test_true_and_false_are_quoted_only_as_group_choices() -> None:
    assert quote_bool_choices(["reward=true", "reward=trex,true", "progress=false", "seed=1"]) == [
        "reward='true'", "reward=trex,'true'", "progress=false", "seed=1"]


def test_a_misspelt_ppo_field_is_named() -> None:
    from plugins.optimizers.ppo import PPO

    with pytest.raises(Exception, match="learning_rat"):
        PPO({"learning_rat": 0.1})


def test_a_key_the_option_does_not_take_is_named_with_the_preset_that_set_it() -> None:
    cfg = compose_config("experiment=trex_mujoco_cpu", "env=hopper", "reward='true'")
    with pytest.raises(IncompatibleError, match=r"reward=true \(EnvReward\) takes no field\(s\) reward.ensemble_size, "
                                                r"reward.num_pairs.*experiment=trex_mujoco_cpu sets them"):
        check_fields(cfg, {"reward": "true", "experiment": "trex_mujoco_cpu"}, ("reward",))
    typo = compose_config("experiment=debug", "+reward.num_pairz=3")  # the user's key, not the preset's
    with pytest.raises(IncompatibleError, match=r"reward=trex \(TREX\) takes no field\(s\) reward.num_pairz\. The") \
            as err:
        check_fields(typo, {"reward": "trex", "experiment": "debug"}, ("reward",))
    assert "experiment=debug" not in str(err.value)
    drex = compose_config("reward=drex", "+reward.num_pairz=3")  # DREX passes T-REX's fields on as **kwargs
    with pytest.raises(IncompatibleError, match=r"reward=drex \(DREX\) takes no field\(s\) reward.num_pairz\."):
        check_fields(drex, {"reward": "drex"}, ("reward",))
    nested = compose_config("preference=synthetic", "+preference.rollouts.checkpoint_evry=5")
    with pytest.raises(IncompatibleError, match=r"preference.rollouts.checkpoint_evry"):  # inside a nested plugin
        check_fields(nested, {"preference": "synthetic"}, ("preference",))


def test_drex_takes_the_trex_fields_and_a_bc_cloner() -> None:
    cfg = compose_config("reward=drex", "reward.num_pairs=123", "experiment=debug")
    assert cfg.reward.num_pairs == 123 and cfg.reward.ensemble_size == 2
    assert cfg.reward.cloner._target_.endswith("BehavioralCloning") and cfg.reward.cloner.epochs == 2
    nested = compose_config("preference=noise_injection", "experiment=debug").preference
    assert nested.demonstrations.stop_return == 60 and len(nested.noise_levels) == 3
