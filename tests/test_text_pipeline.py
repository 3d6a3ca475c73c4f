"""The text track through the pipeline at the debug budget, on tiny models: synthetic preferences over
reference samples -> Bradley-Terry reward -> text PPO -> gold, KL and win-rate evaluation; a user's
preference file; config resolution and refused combinations."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from core.compat import IncompatibleError, check_compatible, plugin_class
from core.pipeline import run_pipeline
from plugins.envs.text import TextEnv
from plugins.preferences.file import PreferenceFileError
from tests.conftest import compose_config, compose_with_choices
from tests.plugins.text_data import sentiment_records, write_jsonl
from tests.test_pipeline import all_artifacts

TEXT_METRICS = ["eval/gold_reward_mean", "eval/kl_to_ref", "eval/win_rate_vs_ref", "eval/true_return_mean",
                "train/kl", "train/entropy", "train/true_return", "train/learned_return", "reward/val_pair_accuracy"]
# (no preference/label_agreement here: the tiny model's character soup has no sentiment, so every pair ties,
# and the labeler says so in a warning instead of logging nan)


def tiny(char_lm_dir: str, tiny_encoder_dir: str) -> list[str]:
    return ["experiment=debug", "env=text", f"env.model={char_lm_dir}", "reward=bradley_terry",
            f"reward.model={tiny_encoder_dir}", "policy=ppo", "progress=false"]


def test_rlhf_on_text_runs_end_to_end_and_logs_the_text_metrics(in_tmp: Path, char_lm_dir: str,
                                                                tiny_encoder_dir: str) -> None:
    uri = f"sqlite:///{in_tmp / 'mlflow.db'}"
    cfg, choices = compose_with_choices(*tiny(char_lm_dir, tiny_encoder_dir), "preference=synthetic",
                                        f"tracking.uri={uri}", "tracking.checkpoints=true")
    metrics = run_pipeline(cfg, choices, in_tmp / "out")
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("rexlab").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "text-bradley_terry-synthetic-ppo-s0"
    assert set(TEXT_METRICS) <= set(run.data.metrics), set(TEXT_METRICS) - set(run.data.metrics)
    assert "preference/label_agreement" not in run.data.metrics
    artifacts = all_artifacts(client, run.info.run_id)
    assert {"samples/final.jsonl", "plots/gold_vs_kl.png", "plots/learning_curve.png", "config.yaml",
            "checkpoints/policy/model.safetensors", "checkpoints/policy/config.json", "checkpoints/policy/rexlab.yaml",
            "checkpoints/policy/adapter/adapter_model.safetensors", "checkpoints/reward/head.pt",
            "checkpoints/reward/backbone/model.safetensors", "checkpoints/preferences.jsonl"} <= artifacts
    assert "checkpoints/demos.npz" not in artifacts  # responses are no demonstrations
    assert 0.0 <= metrics["eval/win_rate_vs_ref"] <= 1.0 and metrics["preference/pairs"] > 0


def test_a_preference_file_trains_the_reward_model_and_reports_held_out_accuracy(in_tmp: Path, char_lm_dir: str,
                                                                                 tiny_encoder_dir: str) -> None:
    path = write_jsonl(in_tmp / "prefs.jsonl", sentiment_records(60, seed=1))
    cfg, choices = compose_with_choices(*tiny(char_lm_dir, tiny_encoder_dir), "preference=file",
                                        f"preference.path={path}", "tracking=none", "reward.val_fraction=0.2")
    metrics = run_pipeline(cfg, choices, in_tmp / "out")
    assert 0.0 <= metrics["reward/val_pair_accuracy"] <= 1.0 and metrics["preference/pairs"] > 60


def test_a_malformed_preference_file_is_named_by_file_and_line(in_tmp: Path, char_lm_dir: str,
                                                               tiny_encoder_dir: str) -> None:
    records = sentiment_records(4, seed=0, ranking_every=0)
    records[2] = {"prompt": "p", "chosen": "fine"}
    path = write_jsonl(in_tmp / "prefs.jsonl", records)
    cfg, choices = compose_with_choices(*tiny(char_lm_dir, tiny_encoder_dir), "preference=file",
                                        f"preference.path={path}", "tracking=none")
    with pytest.raises(PreferenceFileError, match=f"{path}:3: field 'rejected': missing"):
        run_pipeline(cfg, choices, in_tmp / "out")


def test_env_text_brings_its_reward_model_unless_one_is_named() -> None:
    cfg, choices = compose_with_choices("env=text", "policy=grpo", "preference=synthetic")
    assert choices["reward"] == "bradley_terry" and cfg.reward._target_.endswith("BradleyTerry")
    assert cfg.reward.model == "sentence-transformers/all-MiniLM-L6-v2"  # conf/reward/bradley_terry.yaml's own
    assert compose_with_choices("env=text", "reward=trex")[1]["reward"] == "trex"  # named: kept (and refused)
    assert compose_with_choices("env=text", "reward=true")[1]["reward"] == "true"
    assert compose_with_choices("env=cartpole")[1]["reward"] == "trex"  # the default elsewhere
    assert compose_with_choices("experiment=cai")[1]["reward"] == "bradley_terry"


def test_ppo_with_env_text_is_the_text_ppo_with_its_own_settings() -> None:
    cfg = compose_config("env=text", "reward=bradley_terry", "preference=synthetic", "policy=ppo")
    assert cfg.policy._target_ == "plugins.optimizers.text_ppo.TextPPO"
    assert cfg.policy.hparams.kl_coef == 0.2 and cfg.policy.hparams.gamma == 1.0
    assert cfg.preference.rollouts._target_.endswith("ReferenceSamples") and "learner" not in cfg.preference.rollouts
    debug = compose_config("env=text", "preference=synthetic", "policy=ppo", "experiment=debug")
    assert debug.env.max_new_tokens < cfg.env.max_new_tokens and debug.policy.total_timesteps <= 256
    assert "learner" not in debug.preference.rollouts and debug.preference.rollouts.prompts == 16
    assert compose_config("experiment=rlhf_text").policy._target_.endswith("TextPPO")
    assert compose_config("policy=ppo").policy._target_ == "plugins.optimizers.ppo.PPO"  # control unchanged


def test_control_plugins_are_refused_for_text_with_the_options_that_work(char_lm_dir: str) -> None:
    env = TextEnv(model=char_lm_dir)
    cfg = compose_config("env=text", "reward=trex")
    choices = {"env": "text", "reward": "trex", "preference": "learner_checkpoints", "policy": "ppo"}
    with pytest.raises(IncompatibleError, match="reward=trex cannot work with env=text.*reward=bradley_terry"):
        check_compatible(env, choices, {g: plugin_class(cfg[g]) for g in ("reward", "preference", "policy")})
    cfg = compose_config("env=text", "reward=bradley_terry", "policy=bc")
    with pytest.raises(IncompatibleError,
                       match="policy=bc cannot work.*policy=critique_revision,dpo,grpo,ppo,pretrain,sft"):
        check_compatible(env, choices | {"reward": "bradley_terry", "policy": "bc"},
                         {g: plugin_class(cfg[g]) for g in ("reward", "preference", "policy")})


def test_without_preferences_the_unused_control_source_is_not_checked(in_tmp: Path, char_lm_dir: str) -> None:
    """env=text reward=true leaves the default preference=learner_checkpoints (a control PPO learner inside)
    unused: neither it nor its nested learner may refuse the run."""
    cfg, choices = compose_with_choices("experiment=debug", "env=text", f"env.model={char_lm_dir}", "reward=true",
                                        "policy=sft", "progress=false", "tracking=none")
    assert choices["preference"] == "learner_checkpoints"
    metrics = run_pipeline(cfg, choices, in_tmp / "out")
    assert "eval/gold_reward_mean" in metrics


def test_chatgpt_recipe_chains_pretraining_sft_reward_model_and_ppo_from_the_sft_model(
        in_tmp: Path, tiny_lm_dir: str, tiny_encoder_dir: str) -> None:
    from transformers import AutoModelForCausalLM

    from core.artifacts import read_manifest

    uri = f"sqlite:///{in_tmp / 'mlflow.db'}"
    cfg, choices = compose_with_choices("experiment=chatgpt_recipe", "budget=debug", f"env.model={tiny_lm_dir}",
                                        f"reward.model={tiny_encoder_dir}", "progress=false", f"tracking.uri={uri}")
    metrics = run_pipeline(cfg, choices, in_tmp / "out")
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("rexlab").experiment_id])
    assert run.info.status == "FINISHED"
    assert {"pretrain/train_loss", "pretrain/val_loss", "sft/train_loss", "sft/val_loss", "reward/val_pair_accuracy",
            "train/kl", "eval/kl_to_ref", "eval/gold_reward_mean"} <= set(run.data.metrics)
    ckpt = in_tmp / "out" / "checkpoints"
    for stage in ("pretrain", "sft", "policy"):  # each a folder from_pretrained opens
        assert AutoModelForCausalLM.from_pretrained(ckpt / stage) is not None
    # PPO started from the SFT model and measures its KL against it, not against the base model
    assert read_manifest(ckpt / "policy")["load"]["reference"] == "sft"  # beside it: relative, so the run can move
    assert read_manifest(ckpt / "sft")["load"]["reference"] == "pretrain"
    assert metrics["eval/kl_to_ref"] == run.data.metrics["eval/kl_to_ref"]


def test_text_ppo_starts_from_an_sft_run(in_tmp: Path, tiny_lm_dir: str) -> None:
    from core.artifacts import read_manifest

    common = ["experiment=debug", "env=text", f"env.model={tiny_lm_dir}", "reward=true", "progress=false",
              "tracking=none"]
    cfg, choices = compose_with_choices(*common, "policy=sft")
    run_pipeline(cfg, choices, in_tmp / "sft")
    cfg, choices = compose_with_choices(*common, "policy=ppo", f"policy.init={in_tmp / 'sft'}")
    metrics = run_pipeline(cfg, choices, in_tmp / "ppo")
    assert read_manifest(in_tmp / "ppo" / "checkpoints" / "policy")["load"]["reference"] == str(
        in_tmp / "sft" / "checkpoints" / "policy")
    assert metrics["eval/kl_to_ref"] >= 0


def test_dpo_learns_from_the_preferences_directly_with_no_reward_stage(in_tmp: Path, char_lm_dir: str,
                                                                      tiny_encoder_dir: str) -> None:
    path = write_jsonl(in_tmp / "prefs.jsonl", sentiment_records(40, seed=1))
    cfg, choices = compose_with_choices(*tiny(char_lm_dir, tiny_encoder_dir), "policy=dpo", "preference=file",
                                        f"preference.path={path}", "tracking=none", "policy.val_fraction=0.25")
    metrics = run_pipeline(cfg, choices, in_tmp / "out")
    checkpoints = in_tmp / "out" / "checkpoints"
    assert (checkpoints / "policy" / "rexlab.yaml").exists() and not (checkpoints / "reward").exists()
    assert {"eval/gold_reward_mean", "eval/kl_to_ref", "eval/win_rate_vs_ref"} <= set(metrics)
    assert "eval/learned_reward_mean" not in metrics  # no reward model was learned
    assert (in_tmp / "out" / "plots" / "gold_vs_kl.png").exists()


def test_dpo_is_refused_a_source_of_control_trajectories(char_lm_dir: str) -> None:
    env = TextEnv(model=char_lm_dir)
    cfg, choices = compose_with_choices("env=text", "policy=dpo")
    assert choices["preference"] == "learner_checkpoints"
    with pytest.raises(IncompatibleError, match="preference=learner_checkpoints cannot work with env=text"):
        check_compatible(env, choices, {g: plugin_class(cfg[g]) for g in ("reward", "preference", "policy")})


def test_a_sweep_over_text_methods_is_one_parent_with_their_gold_against_kl_on_one_plot(
        in_tmp: Path, char_lm_dir: str, tiny_encoder_dir: str) -> None:
    from tests.test_launchers import sweep_runs
    from tests.test_pipeline import run_main

    path = write_jsonl(in_tmp / "prefs.jsonl", sentiment_records(40, seed=1))
    result = run_main(["-m", *tiny(char_lm_dir, tiny_encoder_dir), "policy=ppo,dpo", "preference=file",
                       f"preference.path={path}"], in_tmp)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    parent, children = sweep_runs(in_tmp)
    assert sorted(r.data.tags["choice.policy"] for r in children) == ["dpo", "ppo"]
    assert all("eval/kl_to_ref" in r.data.metrics for r in children)
    client = MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}")
    assert "plots/gold_vs_kl.png" in all_artifacts(client, parent.info.run_id)
    [sweep] = list((in_tmp / "multirun").glob("*/*"))
    assert (sweep / "plots" / "gold_vs_kl.png").stat().st_size > 10_000


def test_ai_feedback_labels_pairs_under_principles_with_soft_labels_that_the_reward_model_takes(
        in_tmp: Path, char_lm_dir: str, tiny_encoder_dir: str, tiny_lm_dir: str) -> None:
    import json

    from plugins.constitution import read_constitution
    from plugins.preferences.file import read_preference_file

    cfg, choices = compose_with_choices(*tiny(char_lm_dir, tiny_encoder_dir), "preference=ai_feedback",
                                        f"preference.judge={tiny_lm_dir}", "reward.soft_labels=true", "tracking=none")
    metrics = run_pipeline(cfg, choices, in_tmp / "out")
    assert "eval/gold_reward_mean" in metrics and metrics["preference/pairs"] >= 24
    written = in_tmp / "out" / "checkpoints" / "preferences.jsonl"
    labels = [json.loads(line) for line in written.read_text().splitlines()]
    principles = {p.name for p in read_constitution(None)}
    assert all(label["principle"] in principles and 0.5 <= label["probability"] <= 1 for label in labels)
    again = read_preference_file(written)  # the labels' artifact reads back as a preference file
    assert len(again.pairs) == len(labels) and again.items[0].info["principle"] == labels[0]["principle"]


def test_judge_agreement_counts_pairs_of_different_gold() -> None:
    import numpy as np

    from plugins.preferences.ai_feedback import judge_agreement

    p = np.array([0.9, 0.2, 0.5, 0.7])
    assert judge_agreement(p, np.array([1.0, 1.0, 1.0, 0.3]), np.array([0.0, 0.0, 0.0, 0.3])) == (1 + 0 + 0.5) / 3


def test_the_cai_preset_runs_every_stage_and_places_each_model_on_harmlessness_and_helpfulness(
        in_tmp: Path, tiny_lm_dir: str, tiny_encoder_dir: str) -> None:
    import json

    uri = f"sqlite:///{in_tmp / 'mlflow.db'}"
    cfg, choices = compose_with_choices("experiment=cai", "budget=debug", f"env.model={tiny_lm_dir}",
                                        f"preference.judge={tiny_lm_dir}", f"reward.model={tiny_encoder_dir}",
                                        "progress=false", f"tracking.uri={uri}")
    metrics = run_pipeline(cfg, choices, in_tmp / "out")
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("rexlab").experiment_id])
    assert run.info.status == "FINISHED"
    wanted = {"eval/harmlessness", "eval/helpfulness", "eval/ref_harmlessness", "eval/base_helpfulness",
              "eval/few_shot_harmlessness", "eval/win_rate_vs_ref", "eval/kl_to_ref", "preference/position_bias",
              "preference/judge_agreement", "sft/train_loss", "train/kl"}
    assert wanted <= set(run.data.metrics), wanted - set(run.data.metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("eval/harmlessness", "eval/helpfulness"))
    assert {"cai/revisions.jsonl", "plots/harmless_vs_helpful.png"} <= all_artifacts(client, run.info.run_id)
    env = TextEnv(model=tiny_lm_dir, gold=plugin_class(cfg.env.gold)())
    revised = [json.loads(x)["prompt"] for x in (in_tmp / "out" / "cai" / "revisions.jsonl").read_text().splitlines()]
    assert set(revised) <= set(env.train_prompts) and "red_team" in {env.prompt_kinds[p] for p in revised}
