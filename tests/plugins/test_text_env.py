"""env=text and the text policy on a tiny random Llama: the token MDP as a gym vector env, prompt files,
generation against step-by-step acting, padding, the reference, and the held-out evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.evaluation import rollout
from core.interfaces import TOKEN_PAD as PAD_OBS
from core.interfaces import EnvReward
from core.run import RunContext
from core.tracking import NullTracker
from plugins.envs.text import PromptFileError, TextEnv, held_out_split, read_prompts
from plugins.lm import load_causal_lm
from plugins.policies.text import LoraSettings, TextPolicy
from plugins.reviews import PROMPTS as BUNDLED_PROMPTS


@pytest.fixture(scope="module")
def env(tiny_lm_dir: str) -> TextEnv:
    return TextEnv(model=tiny_lm_dir, max_new_tokens=6, eval_samples_per_prompt=1)


def policy_for(model_dir: str, max_new_tokens: int = 6, lora: LoraSettings | None = None) -> TextPolicy:
    lm, tokenizer = load_causal_lm(model_dir)
    return TextPolicy(lm, tokenizer, max_new_tokens, value_head=True, lora=lora)


def test_bundled_prompts_split_into_training_and_held_out_the_same_way_every_time(env: TextEnv,
                                                                                   tiny_lm_dir: str) -> None:
    assert len(read_prompts(BUNDLED_PROMPTS)) == 80
    assert len(env.eval_prompts) == 20 and len(env.train_prompts) == 60
    assert not set(env.eval_prompts) & set(env.train_prompts)
    assert TextEnv(model=tiny_lm_dir).eval_prompts == env.eval_prompts
    assert (env.observation_kind, env.action_kind) == ("text", "token")


def test_each_prompt_kind_is_held_out_in_its_share() -> None:
    kinds = ["red_team"] * 80 + ["helpful"] * 80
    held = held_out_split(kinds, 0.25)
    assert held[:80].sum() == 20 and held[80:].sum() == 20  # a plain shuffle of all 160 held out 14 and 26
    mixed = ["a"] * 7 + ["b"] * 2 + ["c"]
    held = held_out_split(mixed, 0.25)
    assert (held[:7].sum(), held[7:9].sum(), held[9]) == (2, 1, False)  # never a whole kind: c trains
    assert held_out_split([None] * 3, 0.25).sum() == 1 and held_out_split(["x", "y"], 0.25).sum() == 1


def test_a_malformed_prompt_file_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "ok"}) + "\n\n" + json.dumps({"text": "x"}) + "\n{bad\n"
                    + json.dumps({"prompt": ""}) + "\n")
    with path.open("ab") as f:
        f.write(b'{"prompt": "caf\xe9"}\n')  # Latin-1, not UTF-8
    with pytest.raises(PromptFileError) as err:
        read_prompts(path)
    message = str(err.value)
    assert f"{path}:3: field 'text': unknown" in message
    assert f"{path}:4: not valid JSON" in message
    assert f"{path}:5: field 'prompt': empty" in message
    assert f"{path}:6: not UTF-8 text" in message and "nothing was read" in message


def test_the_token_mdp_appends_tokens_and_pays_the_gold_reward_at_the_end(env: TextEnv) -> None:
    envs = env.make_vec(3)
    obs, info = envs.reset(seed=0)
    eos = env.tokenizer.eos_token_id
    assert obs.shape == (3, env.observation_space.shape[0]) and obs.dtype == np.int64
    start = [(row != PAD_OBS).sum() for row in obs]
    prompts = list(info["prompt"])
    rewards, finished = [], []
    for t in range(env.max_new_tokens):
        actions = np.array([eos if t == 2 else 100, 200, 300])  # copy 0 ends at step 3 with EOS
        obs, reward, terminated, truncated, infos = envs.step(actions)
        rewards.append(reward)
        finished.append((terminated.copy(), truncated.copy()))
        if t == 1:
            assert [(row != PAD_OBS).sum() for row in obs] == [s + 2 for s in start]
    assert finished[2][0][0] and not finished[2][1][0] and rewards[2][0] == 0.0  # "" -> VADER 0
    assert finished[-1][1][1:].all() and not finished[-1][0][1:].any()  # the others hit max_new_tokens
    assert all(r[1] == 0.0 for r in rewards[:-1])
    text = env.tokenizer.decode([200] * env.max_new_tokens)
    assert rewards[-1][1] == pytest.approx(env.gold([prompts[1]], [text])[0])
    final = infos["final_info"]  # SAME_STEP autoreset: the finished episode's info
    assert final["response"][1] == text and final["prompt"][1] == prompts[1]
    envs.close()


def test_generate_is_the_token_mdp_walked_with_a_kv_cache(env: TextEnv, tiny_lm_dir: str) -> None:
    policy = policy_for(tiny_lm_dir).eval()
    greedy = policy.generate(policy.encode(env.train_prompts[:3]), deterministic=True)
    obs = np.full((3, 40), PAD_OBS, dtype=np.int64)
    for k, ids in enumerate(policy.encode(env.train_prompts[:3])):
        obs[k, :len(ids)] = ids
    for t in range(policy.max_new_tokens):  # act() on the growing observation, one step at a time
        token = policy.act(obs, deterministic=True)
        np.testing.assert_array_equal(token, greedy.response[:, t].numpy())
        for k in range(3):
            obs[k, np.argmax(obs[k] == PAD_OBS)] = token[k]
    trajs = rollout(policy, env, episodes=4, seed=0)  # the generic rollout works on the token MDP
    assert all(len(t) <= env.max_new_tokens for t in trajs) and len(trajs) == 4


def test_token_scores_ignore_padding_and_the_reference_starts_equal(tiny_lm_dir: str) -> None:
    for lora in (None, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"])):
        policy = policy_for(tiny_lm_dir, lora=lora)
        prompts = ["A", "The restaurant on the corner"]
        batch = policy.generate(policy.encode(prompts), torch.Generator().manual_seed(0))
        logprobs, entropy, values = policy.score_tokens(batch, values=True)
        single = policy.generate(policy.encode(prompts[:1]), torch.Generator().manual_seed(0))
        single.response, single.response_mask = batch.response[:1], batch.response_mask[:1]
        alone, _, _ = policy.score_tokens(single)  # the short prompt without left padding
        torch.testing.assert_close(logprobs[:1], alone, atol=1e-5, rtol=1e-4)
        reference, _, _ = policy.score_tokens(batch, reference=True)
        torch.testing.assert_close(logprobs, reference)
        assert values is not None and (values == 0).all()  # the value head starts at zero
        assert (entropy[batch.response_mask.bool()] > 0).all()
        trainable = policy.state_dict()
        assert "value_head.weight" in trainable
        if lora is not None:
            assert all("lora" in k or "value_head" in k for k in trainable)


def test_evaluation_reports_gold_kl_and_win_rate_and_writes_samples(env: TextEnv, tiny_lm_dir: str,
                                                                    tmp_path: Path) -> None:
    policy = policy_for(tiny_lm_dir)
    tracker = NullTracker()
    run = RunContext(0, tmp_path, tracker, progress=False)
    metrics = env.evaluate(policy, EnvReward(), run, episodes=10, seed=1)
    assert metrics["eval/kl_to_ref"] == pytest.approx(0.0, abs=1e-4)  # the untrained policy is its reference
    assert metrics["eval/gold_reward_mean"] == metrics["eval/true_return_mean"]
    assert metrics["eval/win_rate_vs_ref"] == pytest.approx(0.5)  # same seed, same model: all ties
    rows = [json.loads(line) for line in (tmp_path / "samples" / "final.jsonl").read_text().splitlines()]
    assert len(rows) == len(env.eval_prompts) and {r["prompt"] for r in rows} == set(env.eval_prompts)
    assert (tmp_path / "plots" / "gold_vs_kl.png").exists()
    with torch.no_grad():  # move the policy away from its reference: KL grows, the reference stays
        for p in policy.lm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    moved = env.evaluate_text(policy, EnvReward(), run, 10, 1, "moved")
    assert moved["eval/kl_to_ref"] > 0.1
    assert moved["eval/ref_gold_reward_mean"] == metrics["eval/ref_gold_reward_mean"]
