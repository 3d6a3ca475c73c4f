"""Text PPO throughput at the default settings (SmolLM2-135M-Instruct with LoRA, 16 prompts, responses
of at most 16 tokens, 4 epochs x 2 minibatches), next to peers doing the same work in the same run:

- generation (tokens/s): rexlab's KV-cached sampling loop (TextPolicy.generate) against transformers'
  `generate` (do_sample, top_k=0, top_p=1: the same distribution) on the same prompts;
- PPO update (response tokens/s through forward + backward + Adam, all epochs): rexlab's minibatch
  step (TextPolicy.score_tokens, the vocabulary projection on response positions only) against the
  same step computing log-probs from the full `model(...).logits` over prompt and response, the way a
  plain Hugging Face loop (and TRL) gets them.

TRL itself is not run: its PPO trainer needs a dataset pipeline, a separate reward and value model,
and minutes of set-up for the same 135M model, too dear for a 2-core machine.

    OMP_NUM_THREADS=1 .venv/bin/python bench/text_ppo_throughput.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from plugins.envs.text import TextEnv  # noqa: E402
from plugins.optimizers.ppo import clipped_policy_loss, value_loss  # noqa: E402
from plugins.optimizers.text_ppo import TextPPOHparams  # noqa: E402
from plugins.policies.text import LoraSettings, Rollout, TextPolicy, build_text_policy  # noqa: E402


def hf_generate(policy: TextPolicy, prompts: list[str], max_new_tokens: int) -> int:
    """transformers' generate on the same left-padded prompts; returns the tokens generated (to EOS)."""
    query, mask = policy.left_pad(policy.encode(prompts))  # (prompts as the task presents them)
    out = policy.lm.generate(input_ids=query, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                             temperature=1.0, max_new_tokens=max_new_tokens, pad_token_id=policy.pad_id)
    response = out[:, query.shape[1]:]
    ended = (response == policy.eos_id).cumsum(1)
    return int(((ended == 0) | ((ended == 1) & (response == policy.eos_id))).sum())


def full_logits_logprobs(policy: TextPolicy, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the response tokens from the full logits (B, Q + T, V), and values from hidden states."""
    ids = torch.cat([rollout.query, rollout.response], 1)
    mask = torch.cat([rollout.query_mask, rollout.response_mask], 1)
    out = policy.lm(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                    output_hidden_states=True)
    Q, T = rollout.query.shape[1], rollout.response.shape[1]
    logp = torch.log_softmax(out.logits.float(), -1)[:, Q - 1:Q + T - 1].gather(-1, rollout.response[..., None])
    assert policy.value_head is not None
    return logp.squeeze(-1), policy.value_head(out.hidden_states[-1][:, Q - 1:Q + T - 1]).squeeze(-1)


def update(policy: TextPolicy, rollout: Rollout, hp: TextPPOHparams, full_logits: bool) -> float:
    """All epochs of PPO minibatch steps on one batch; returns response tokens processed per second."""
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=hp.learning_rate, eps=1e-5)
    with torch.no_grad():
        old, _, old_values = policy.score_tokens(rollout, values=True)
    assert old_values is not None
    advantages, returns = torch.randn_like(old), torch.randn_like(old)
    size = len(rollout) // hp.num_minibatches
    start, tokens = time.perf_counter(), 0
    for _ in range(hp.update_epochs):
        for k in range(hp.num_minibatches):
            rows = torch.arange(k * size, (k + 1) * size)
            part = rollout.select(rows)
            m = part.response_mask.bool()
            if full_logits:
                logprobs, values = full_logits_logprobs(policy, part)
            else:
                logprobs, _, v = policy.score_tokens(part, values=True)
                assert v is not None
                values = v
            loss, _ = clipped_policy_loss(logprobs[m], old[rows][m], advantages[rows][m], hp.clip_coef)
            loss = loss + hp.vf_coef * value_loss(values[m], old_values[rows][m], returns[rows][m], hp.clip_coef)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad], hp.max_grad_norm)
            optimizer.step()
            tokens += int(m.sum())
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="batches timed per measurement (best kept)")
    args = parser.parse_args()
    torch.manual_seed(0)
    env = TextEnv()
    hp = TextPPOHparams(lora=LoraSettings())
    policy = build_text_policy(env.model, env.max_new_tokens, value_head=True, lora=hp.lora)
    prompts = env.train_prompts[: hp.batch_size]
    policy.eval()
    rexlab_gen, hf_gen = [], []
    for r in range(args.repeats):
        start = time.perf_counter()
        rollout = policy.generate(policy.encode(env.present(prompts)), torch.Generator().manual_seed(r))
        rexlab_gen.append(int(rollout.response_mask.sum()) / (time.perf_counter() - start))
        start = time.perf_counter()
        with torch.no_grad():
            tokens = hf_generate(policy, env.present(prompts), env.max_new_tokens)
        hf_gen.append(tokens / (time.perf_counter() - start))
    policy.train()
    ours = max(update(policy, rollout, hp, full_logits=False) for _ in range(args.repeats))
    peer = max(update(policy, rollout, hp, full_logits=True) for _ in range(args.repeats))
    print(f"text PPO, {hp.batch_size} prompts x <= {env.max_new_tokens} tokens, SmolLM2-135M-Instruct + LoRA "
          f"r={hp.lora.r} (torch threads: {torch.get_num_threads()})")
    print(f"  generation  rexlab KV-cached loop   {max(rexlab_gen):8.1f} tokens/s")
    print(f"              transformers generate   {max(hf_gen):8.1f} tokens/s")
    print(f"  PPO update  rexlab score_tokens     {ours:8.1f} response tokens/s "
          f"({hp.update_epochs} epochs x {hp.num_minibatches} minibatches, forward + backward + Adam)")
    print(f"              full-logits forward     {peer:8.1f} response tokens/s")


if __name__ == "__main__":
    main()
