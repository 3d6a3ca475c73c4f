"""D-REX's noise injection for language models (preference=noise_injection with env=text): epsilon-random tokens
in TextPolicy.generate, the source's automatic pairs (within each prompt draw, the less noisy preferred) and its
config (the `text:` variant replaces the control source whole)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import get_class, instantiate

from core.pipeline import RunSettings
from core.run import RunContext
from core.schema import ConfigError, check_config
from core.tracking import NullTracker
from core.types import Response
from plugins.envs.text import TextEnv
from plugins.policies.text import TextPolicy, build_text_policy
from plugins.preferences.noise_injection import NoiseInjection
from plugins.preferences.text_noise import TextNoiseInjection, noise_pairs, report
from tests.conftest import compose_config

PROMPTS = ["the film was", "what a day", "i think", "a story of"] * 8


def sharp_policy(model_dir: str, temperature: float = 0.1) -> TextPolicy:
    """The tiny random model at a low temperature: peaked enough for noise to show (at 1.0 it is near uniform)."""
    policy = build_text_policy(model_dir, max_new_tokens=12, temperature=temperature, reference=False)
    return policy.eval()


def per_token_logprob(policy: TextPolicy, epsilon: float, seed: int = 0) -> tuple[float, int]:
    """The responses' mean log-probability per token under the policy, and the number of distinct tokens."""
    rollout = policy.generate(policy.encode(PROMPTS), torch.Generator().manual_seed(seed), epsilon=epsilon)
    with torch.no_grad():
        logprobs = policy.score_tokens(rollout)[0]
    mask = rollout.response_mask.bool()
    return float(logprobs[mask].mean()), len(set(rollout.response[mask].tolist()))


def test_epsilon_zero_samples_exactly_as_before(char_lm_dir: str) -> None:
    policy = sharp_policy(char_lm_dir, temperature=1.0)
    queries = policy.encode(PROMPTS[:8])
    plain, zero = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    before = policy.generate(queries, plain)
    after = policy.generate(queries, zero, epsilon=0.0)
    assert torch.equal(before.response, after.response) and torch.equal(before.response_mask, after.response_mask)
    assert torch.equal(plain.get_state(), zero.get_state())  # no extra random numbers drawn
    again = policy.generate(queries, torch.Generator().manual_seed(3), epsilon=0.5)
    noisy = policy.generate(queries, torch.Generator().manual_seed(3), epsilon=0.5)
    assert torch.equal(again.response, noisy.response)  # reproducible from the generator's seed
    with pytest.raises(ValueError, match="epsilon must be in"):
        policy.generate(queries, epsilon=1.5)


def test_noise_spreads_tokens_over_the_vocabulary_and_lowers_the_likelihood(tiny_lm_dir: str) -> None:
    """The noise ranking orders responses as intended: the more noise, the less like the model they are."""
    policy = sharp_policy(tiny_lm_dir, temperature=0.02)  # SmolLM2's 49152 tokens
    (clean, clean_kinds), (some, some_kinds), (pure, pure_kinds) = (per_token_logprob(policy, eps)
                                                                    for eps in (0.0, 0.3, 1.0))
    assert pure_kinds > 0.95 * 32 * 12 > 10 * clean_kinds and clean_kinds < some_kinds < pure_kinds
    assert clean > some + 1.0 > pure + 2.0, (clean, some, pure)
    assert pure < np.log(1.0 / len(policy.tokenizer))  # uniform tokens: rarer under the model than at random


def source(**fields: object) -> TextNoiseInjection:
    return TextNoiseInjection(**{"prompts": 20, "batch_size": 16, **fields})  # type: ignore[arg-type]


def test_pairs_rank_each_prompt_draw_by_noise_alone(char_lm_dir: str, tmp_path: Path) -> None:
    env = TextEnv(model=char_lm_dir, max_new_tokens=12)
    tracker = NullTracker()
    levels = [1.0, 0.0, 0.5]
    prefs = source(noise_levels=levels, rollouts_per_level=2).gather(env, RunContext(0, tmp_path, tracker,
                                                                                       progress=False))
    assert len(prefs.items) == 20 * 2 * 3
    assert len(prefs.pairs) == 20 * 2 * 2 * 3  # per draw: 2 x 2 responses for each of the 3 pairs of levels
    assert len({tuple(p) for p in prefs.pairs.tolist()}) == len(prefs.pairs)
    for i, j in prefs.pairs:
        better, worse = prefs.items[i], prefs.items[j]
        assert better.info["draw"] == worse.info["draw"] and better.prompt == worse.prompt
        assert better.info["noise"] < worse.info["noise"]
    prompts = [r.prompt for r in prefs.items if r.info["noise"] == 0.0][::2]
    assert len(set(prompts)) < len(prompts)  # a prompt drawn twice: two groups, no pair across them
    np.testing.assert_array_equal(prefs.scores, [-r.info["noise"] for r in prefs.items])
    assert all(r.gold is not None and r.info["temperature"] == 1.0 for r in prefs.items)
    assert {"preference/gold_mean", "preference/gold_at_noise_0", "preference/gold_at_noise_0.5",
            "preference/gold_at_noise_1"} <= set(tracker.history)
    again = source(noise_levels=levels, rollouts_per_level=2).gather(env, RunContext(0, tmp_path, NullTracker(),
                                                                                       progress=False))
    assert [r.text for r in again.items] == [r.text for r in prefs.items]  # seeded by run.seed


def test_temperatures_add_noise_along_the_same_order(char_lm_dir: str, tmp_path: Path) -> None:
    env = TextEnv(model=char_lm_dir, max_new_tokens=12)
    tracker = NullTracker()
    prefs = source(noise_levels=[0.0, 0.0, 0.2], temperatures=[0.5, 1.0, 1.0], prompts=4).gather(
        env, RunContext(0, tmp_path, tracker, progress=False))
    assert len(prefs.pairs) == 4 * 3
    for i, j in prefs.pairs:
        a, b = prefs.items[i].info, prefs.items[j].info
        assert (a["noise"], a["temperature"]) < (b["noise"], b["temperature"])
    assert "preference/gold_at_noise_0_temperature_0.5" in tracker.history


def test_label_agreement_counts_pairs_of_different_gold_only() -> None:
    def item(draw: int, noise: float) -> Response:
        return Response("p", str(noise), info={"noise": noise, "temperature": 1.0, "draw": draw})

    items = [item(0, 0.0), item(0, 0.0), item(0, 1.0), item(1, 0.0), item(1, 1.0)]
    pairs = noise_pairs(items)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 2), (1, 2), (3, 4)]  # no tie pair, none across draws
    tracker = NullTracker()
    report(items, pairs, np.array([1.0, 0.0, 0.0, 0.5, 0.2]), RunContext(0, Path("unused"), tracker, progress=False))
    (_, agreement), = tracker.history["preference/label_agreement"]
    assert agreement == pytest.approx(1.0)  # (1, 2) has equal gold: left out; (0, 2) and (3, 4) agree
    (_, at_zero), = tracker.history["preference/gold_at_noise_0"]
    assert at_zero == pytest.approx(0.5)


@pytest.mark.parametrize(("fields", "message"), [
    ({"noise_levels": [0.1, 0.1]}, "preference.noise_levels: .*at least two different levels"),
    ({"noise_levels": [0.0, 0.5], "temperatures": [1.0]}, "preference.temperatures: 1 temperatures for 2"),
    ({"noise_levels": [0.0, 0.5], "temperatures": [1.5, 1.0]}, "preference.temperatures: .*must not fall"),
])
def test_a_schedule_without_an_order_is_refused_with_its_key(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TextNoiseInjection(**fields)  # type: ignore[arg-type]


def test_env_text_gets_the_text_source_whole() -> None:
    cfg = compose_config("env=text", "preference=noise_injection", "reward=bradley_terry", "experiment=debug")
    assert set(cfg.preference) == {"_target_", "noise_levels", "temperatures", "prompts", "rollouts_per_level",
                                   "model", "batch_size"}
    assert list(cfg.preference.noise_levels) == [0.0, 0.2, 1.0] and cfg.preference.rollouts_per_level == 1
    check_config(cfg, ["env", "reward", "preference", "policy"], RunSettings)
    built = instantiate(cfg.preference)
    assert isinstance(built, TextNoiseInjection) and built.prompts == 8
    full = compose_config("env=text", "preference=noise_injection", "preference.rollouts_per_level=3")
    assert full.preference.rollouts_per_level == 3 and full.preference.prompts == 128
    assert "cloner" not in full.preference


def test_control_envs_keep_the_control_source() -> None:
    cfg = compose_config("env=cartpole", "preference=noise_injection")
    assert cfg.preference._target_ == "plugins.preferences.noise_injection.NoiseInjection"
    assert {"demonstrations", "cloner", "num_demos", "include_demonstrations"} <= set(cfg.preference)
    assert len(cfg.preference.noise_levels) == 20 and "temperatures" not in cfg.preference
    debug = compose_config("env=cartpole", "preference=noise_injection", "experiment=debug")
    assert list(debug.preference.noise_levels) == [1.0, 0.5, 0.05] and debug.preference.rollouts_per_level == 2
    assert get_class(debug.preference._target_) is NoiseInjection
