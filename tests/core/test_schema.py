"""Typed config schemas, variants and presets: bad values, unknown presets and missing pieces are refused
before any work with the key, the value and what is allowed; a new env needs one YAML file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from core.compat import CONF_DIR, IncompatibleError
from core.pipeline import RunSettings, finalize_config, run_pipeline
from core.schema import ConfigError, check_config
from core.variants import resolve_variants
from tests.conftest import compose_config, compose_with_choices

GROUPS = ["env", "reward", "preference", "policy"]


@pytest.mark.parametrize(("override", "message"), [
    ("ppo.gamma=2", "ppo.gamma: 2: must be a number in [0, 1]"),
    ("reward.val_fraction=1.5", "reward.val_fraction: 1.5: must be a number in [0, 1)"),
    ("policy.total_timesteps=-5", "policy.total_timesteps: -5: must be an integer >= 1 or null"),
    ("evaluation.episodes=0", "evaluation.episodes: 0: must be an integer >= 1"),
    ("reward.ensemble_size=0", "reward.ensemble_size: 0: must be an integer >= 1"),
    ("reward.lr=-1", "reward.lr: -1: must be a number in (0, 1]"),
    ("reward.lr=1e6", "reward.lr: 1000000.0: must be a number in (0, 1]"),
    ("reward.alive_bonus=nan", "reward.alive_bonus: NaN: must be a number"),
    ("ppo.num_envs=0", "ppo.num_envs: 0: must be an integer >= 1"),
    ("reward.squash=cube", 'reward.squash: "cube": must be one of "none", "tanh", "sigmoid"'),
    ("ppo.learning_rate=fast", 'ppo.learning_rate: "fast": must be a number in (0, 1]'),
    ("preference.learner.total_timesteps=0", "preference.learner.total_timesteps: 0: must be an integer >= 1"),
])
def test_out_of_range_values_are_refused_with_the_key_the_user_sets(override: str, message: str) -> None:
    cfg = compose_config(override)
    with pytest.raises(ConfigError) as err:
        check_config(cfg, GROUPS, RunSettings)
    assert message in str(err.value)


def test_the_defaults_and_every_preset_pass_their_schemas() -> None:
    check_config(compose_config(), GROUPS, RunSettings)
    for preset in sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")):
        cfg, choices = compose_with_choices(f"experiment={preset}")
        groups = ["env", "reward", "policy", "preference", *(f"recipe.{k}" for k in cfg.recipe)]
        check_config(cfg, groups, RunSettings)


def test_a_bad_value_is_refused_before_anything_runs(in_tmp: Path) -> None:
    cfg, choices = compose_with_choices("experiment=debug", "ppo.gamma=2", "tracking=none")
    with pytest.raises(ConfigError, match="ppo.gamma: 2"):
        run_pipeline(cfg, choices, in_tmp / "out")
    assert not (in_tmp / "out").exists()


def test_an_unknown_preset_is_refused_with_the_presets() -> None:
    cfg, choices = compose_with_choices("experiment=trex_mujoco_cpuu")
    with pytest.raises(IncompatibleError, match="experiment=trex_mujoco_cpuu: no such preset.*trex_mujoco_cpu"):
        run_pipeline(cfg, choices, Path("unused"))


def test_variants_apply_below_presets_and_the_command_line() -> None:
    debug = compose_config("experiment=debug")
    assert debug.reward.num_pairs == 400 and "variants" not in debug.reward
    assert compose_config("experiment=debug", "reward.num_pairs=7").reward.num_pairs == 7
    # a key the user sets counts for the keys that read it: policy.total_timesteps is ${ppo.total_timesteps}
    assert compose_config("experiment=debug", "ppo.total_timesteps=777").policy.total_timesteps == 777
    atari = compose_config("env=atari", "experiment=debug")
    assert (atari.reward.ensemble_size, atari.reward.num_pairs, atari.reward.frame_stride) == (1, 64, 2)
    preset = compose_config("experiment=trex_atari_cpu")  # the preset's own num_pairs beats the atari variant
    assert preset.reward.num_pairs == 2000 and preset.reward.epochs == 1 and preset.reward.frame_stride == 2
    text = compose_config("env=text", "preference=synthetic", "preference.rollouts.prompts=5")
    assert text.preference.rollouts._target_.endswith("ReferenceSamples") and text.preference.rollouts.prompts == 5


def test_a_variant_naming_another_plugin_replaces_the_node_keeping_the_users_keys() -> None:
    cfg = OmegaConf.create({"preference": {
        "_target_": "control.Source", "demos": {"_target_": "control.Demos", "n": 1}, "levels": [1.0], "count": 5,
        "init": None, "variants": {"text": {"_target_": "text.Source", "levels": [0.0], "prompts": 4},
                                   "debug": {"count": 2}, "debug+text": {"prompts": 1}}}})
    out = resolve_variants(cfg, "text", "debug", {"preference.levels"})
    assert OmegaConf.to_container(out.preference) == {  # none of the control keys but the user's and core's
        "_target_": "text.Source", "levels": [1.0], "prompts": 1, "init": None, "count": 2}
    merged = resolve_variants(cfg, "cartpole", "debug", set())  # no text: the control node, its debug variant
    assert merged.preference.count == 2 and merged.preference.demos.n == 1 and "prompts" not in merged.preference
    # a user's _target_ wins: the variant merges into the node instead (the user's class keeps its keys)
    kept = resolve_variants(cfg, "text", "full", {"preference._target_"})
    assert kept.preference._target_ == "control.Source" and kept.preference.prompts == 4 and "demos" in kept.preference
    # the real config: env=text swaps the control noise injection for the text one, a command-line key stays
    text = compose_config("env=text", "preference=noise_injection", "experiment=debug", "preference.prompts=3")
    assert text.preference._target_.endswith("TextNoiseInjection") and text.preference.prompts == 3
    assert "cloner" not in text.preference and "demonstrations" not in text.preference
    ppo = compose_config("env=text", "policy=ppo", "ppo.total_timesteps=777")  # swapped whole, its keys spelled out
    assert ppo.policy._target_.endswith("TextPPO") and ppo.policy.total_timesteps == 777 and "init" in ppo.policy
    # a ppo.* setting reaches the replaced control learner through its interpolation only: it does not drag the
    # learner into the text source that replaces it, and still reaches the text PPO
    tuned = compose_config("env=text", "preference=synthetic", "policy=ppo", "ppo.learning_rate=3e-4")
    assert "learner" not in tuned.preference.rollouts and tuned.policy.hparams.learning_rate == 3e-4


def test_a_new_env_needs_only_its_yaml_file(tmp_path: Path) -> None:
    """conf/env/acrobot.yaml alone (no conf/ppo/acrobot.yaml): PPO runs with its defaults (and the learner
    behind learner_checkpoints too, which the issue saw fail with an InterpolationKeyError)."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "env" / "acrobot.yaml").write_text("_target_: plugins.envs.gym.GymEnv\nid: Acrobot-v1\nname: acrobot\n")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=[
            "env=acrobot", "reward='true'", "experiment=debug", "tracking=none", "progress=false",
            "video.enabled=false", "evaluation.episodes=2"], return_hydra_config=True)
    choices = {k: str(v) for k, v in cfg.hydra.runtime.choices.items()}
    with open_dict(cfg):
        cfg.pop("hydra")
    cfg = finalize_config(cfg, choices, ["experiment=debug"])
    assert cfg.policy.hparams is None and cfg.policy.total_timesteps == 4096  # the debug budget, PPO's defaults
    assert cfg.preference.learner.hparams is None
    metrics = run_pipeline(cfg, choices, tmp_path / "out")
    assert "eval/true_return_mean" in metrics
