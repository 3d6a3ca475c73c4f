"""The text policy: a causal language model acting in the token MDP (state = prompt + tokens so far,
action = the next token), with an optional scalar value head for PPO and its frozen reference.

- `generate` samples whole responses to a batch of prompts (a KV-cached loop over the token MDP's
  steps, with a seeded generator; the distribution is softmax(logits / temperature), no top-k/top-p,
  so the log-probabilities PPO needs are the sampling distribution's);
- `score_tokens` gives, for each response token, its log-probability under the policy (or the
  reference), the entropy of the policy at that step and the value of the state it was taken in;
- `act` is the token MDP's one-step interface (observations are token ids, padded with -1).

The reference is the model as it was built (before any training): with LoRA (Hu et al. 2021, through
peft) it is the same network with its adapters switched off, otherwise a frozen copy (or, for a policy
loaded back from an artifact, the model it had started from). The value head reads the LM's final
hidden state of each state (a shared trunk, as in Ziegler et al. 2019) and starts at zero. Only trained
parameters are in `state_dict()` (the adapters, or the whole LM, and the head).

`save` writes a Hugging Face `save_pretrained` folder that `AutoModelForCausalLM.from_pretrained` opens
(with LoRA: the adapters merged into the weights; the adapters themselves in its adapter/ subfolder),
with the tokenizer, the value head (value_head.pt) and rexlab.yaml, which `load_text_policy` reads.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from core.interfaces import TOKEN_PAD, LanguagePolicy
from core.schema import NonNegative, PositiveInt
from plugins.lm import load_causal_lm

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

@dataclass
class LoraSettings:
    """LoRA adapters (peft): rank r, scale alpha / r, dropout, and the modules adapted."""

    r: PositiveInt = 16
    alpha: PositiveInt = 32
    dropout: NonNegative = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                "gate_proj", "up_proj", "down_proj"])


@dataclass
class Rollout:
    """Responses to a batch of B prompts.

    query: (B, Q) prompt token ids, left-padded; query_mask: (B, Q) 1 on real tokens.
    response: (B, T) sampled token ids (padding after the end); response_mask: (B, T) 1 up to and
    including each response's last token (its EOS, if it ended with one).
    """

    query: torch.Tensor
    query_mask: torch.Tensor
    response: torch.Tensor
    response_mask: torch.Tensor

    def __len__(self) -> int:
        return self.query.shape[0]

    def select(self, rows: torch.Tensor) -> Rollout:
        return Rollout(self.query[rows], self.query_mask[rows], self.response[rows], self.response_mask[rows])

    def to(self, device: torch.device) -> Rollout:
        """The same rollout on `device` (itself where it is there already)."""
        if self.query.device == device:
            return self
        return Rollout(self.query.to(device), self.query_mask.to(device), self.response.to(device),
                       self.response_mask.to(device))


def _decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The transformer body and the vocabulary projection of a causal LM (inside any peft wrapper)."""
    base: Any = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    return base.get_decoder(), base.get_output_embeddings()


class TextPolicy(LanguagePolicy, nn.Module):
    """lm: a Hugging Face causal LM; tokenizer: its tokenizer; max_new_tokens: response length limit;
    temperature: the policy is softmax(logits / temperature); value_head: add PPO's value head;
    lora: wrap the LM in LoRA adapters (only they train); reference: keep the initial model as the
    reference policy; batch_size: responses generated at once by `sample`; origin: the name or folder
    the LM was loaded from (the reference's, recorded when the policy is saved); reference_lm: the
    reference as a model of its own (a policy loaded back: the model it started from)."""

    def __init__(self, lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int,
                 temperature: float = 1.0, value_head: bool = False, lora: LoraSettings | None = None,
                 reference: bool = True, batch_size: int = 32, origin: str | None = None,
                 reference_lm: PreTrainedModel | None = None) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.tokenizer, self.max_new_tokens, self.temperature = tokenizer, max_new_tokens, temperature
        self.batch_size, self.origin = batch_size, origin
        self.eos_id, self.pad_id = int(tokenizer.eos_token_id), int(tokenizer.pad_token_id)
        self.uses_lora = lora is not None
        # A list keeps the frozen copy out of this module's parameters, state_dict and optimiser.
        self._frozen: list[nn.Module] = []
        network: Any = lm
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            network = get_peft_model(lm, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                    target_modules=list(lora.target_modules), bias="none"))
        if reference_lm is not None:
            self._frozen.append(reference_lm.eval().requires_grad_(False))
        elif reference and lora is None:
            self._frozen.append(copy.deepcopy(lm).eval().requires_grad_(False))
        self.has_reference = bool(self._frozen) or (reference and lora is not None)
        self.lm: Any = network
        self.value_head: nn.Linear | None = None
        if value_head:
            self.value_head = nn.Linear(int(lm.config.hidden_size), 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    # ------------------------------------------------------------ which network
    @contextmanager
    def _network(self, reference: bool) -> Iterator[nn.Module]:
        """The policy's LM, or the reference (adapters off, or the frozen copy)."""
        if not reference:
            yield self.lm
            return
        if not self.has_reference:
            raise RuntimeError("this text policy keeps no reference model")
        if self._frozen:
            yield self._frozen[0].to(self.device)  # (not a submodule: it follows the policy's device when used)
        else:
            with self.lm.disable_adapter():
                yield self.lm

    @property
    def device(self) -> torch.device:
        """Where the language model is: generation and scoring run there, their results stay there."""
        return next(self.lm.parameters()).device

    # ------------------------------------------------------------ text <-> tokens
    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        """Prompt token ids (no special tokens added; an empty prompt starts from the EOS token)."""
        ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        return [list(x) if len(x) else [self.eos_id] for x in ids]

    def decode(self, rollout: Rollout) -> list[str]:
        """Each response's text, without its EOS token."""
        out = []
        for ids, mask in zip(rollout.response.tolist(), rollout.response_mask.tolist(), strict=True):
            tokens = [t for t, m in zip(ids, mask, strict=True) if m and t != self.eos_id]
            out.append(str(self.tokenizer.decode(tokens, skip_special_tokens=True)))
        return out

    def left_pad(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token id lists -> ids, mask (B, longest), padded on the left."""
        longest = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for k, s in enumerate(sequences):
            if len(s):
                ids[k, longest - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
                mask[k, longest - len(s):] = 1
        return ids, mask

    # ------------------------------------------------------------ acting
    @torch.no_grad()
    def generate(self, queries: Sequence[Sequence[int]], generator: torch.Generator | None = None,
                 reference: bool = False, deterministic: bool = False, epsilon: float = 0.0) -> Rollout:
        """Sample a response (at most max_new_tokens, ending at EOS) to each prompt (token ids). epsilon: with
        this probability, independently per row and step, the token is instead drawn uniformly from the
        vocabulary (D-REX's noise injection), with the same `generator`; 0 draws no extra random numbers."""
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        device = self.device
        query, query_mask = (x.to(device) for x in self.left_pad(queries))
        B, T = len(queries), self.max_new_tokens
        response = torch.full((B, T), self.pad_id, dtype=torch.long, device=device)
        alive = torch.ones(B, dtype=torch.bool, device=device)
        lengths = torch.zeros(B, dtype=torch.long, device=device)
        with self._network(reference) as net:
            mask, ids = query_mask, query
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            cache: Any = None
            for t in range(T):
                out = net(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                          use_cache=True)
                cache = out.past_key_values
                logits = out.logits[:, -1].float() / self.temperature
                token = logits.argmax(-1) if deterministic else sample_tokens(torch.softmax(logits, -1), generator)
                if epsilon > 0:  # B uniforms, then B token ids, whatever the outcome, on the generator's device
                    where = generator.device if generator is not None else torch.device("cpu")
                    noisy = torch.rand(B, generator=generator, device=where) < epsilon
                    uniform = torch.randint(min(len(self.tokenizer), logits.shape[-1]), (B,), generator=generator,
                                            device=where)
                    token = torch.where(noisy.to(device), uniform.to(device), token)
                token = torch.where(alive, token, torch.full_like(token, self.pad_id))
                response[:, t] = token
                lengths += alive.long()
                alive &= token != self.eos_id
                if not alive.any():
                    break
                ids = token[:, None]
                mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=device)], 1)
                positions = positions[:, -1:] + 1
        response_mask = (torch.arange(T, device=device)[None, :] < lengths[:, None]).long()
        return Rollout(query, query_mask, response, response_mask)

    @contextmanager
    def _evaluating(self) -> Iterator[None]:
        """Eval mode (no dropout) inside, the previous mode after."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    def sample(self, prompts: Sequence[str], seed: int, reference: bool = False) -> tuple[Rollout, list[str]]:
        """Responses to `prompts`, generated `batch_size` at a time with a generator seeded by `seed` (in
        eval mode); the rollout's tensors are right-padded to the longest response of the whole set."""
        generator = torch.Generator().manual_seed(seed)
        queries = self.encode(prompts)
        with self._evaluating():
            parts = [self.generate(queries[k:k + self.batch_size], generator, reference)
                     for k in range(0, len(queries), self.batch_size)]
        rollout = concat_rollouts(parts, self.pad_id)
        return rollout, self.decode(rollout)

    def response_lengths(self, sampled: Rollout) -> np.ndarray:
        return sampled.response_mask.sum(1).cpu().numpy()

    @torch.no_grad()
    def log_ratio(self, sampled: Rollout) -> np.ndarray:
        """Summed log pi - log pi_ref of each response's tokens (N,), `batch_size` responses at a time."""
        with self._evaluating():
            return np.concatenate([
                (self.score_tokens(part)[0] - self.score_tokens(part, reference=True)[0]).sum(1).cpu().numpy()
                for part in (sampled.select(torch.arange(k, min(k + self.batch_size, len(sampled))))
                             for k in range(0, len(sampled), self.batch_size))])

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """obs (N, L) token ids of prompt + response so far, right-padded with -1 -> next tokens (N,)."""
        rows = [[int(t) for t in row if t != TOKEN_PAD] for row in np.asarray(obs)]
        ids, mask = (x.to(self.device) for x in self.left_pad(rows))
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = self.lm(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].float().cpu()
        if deterministic:
            return logits.argmax(-1).numpy()
        return torch.multinomial(torch.softmax(logits / self.temperature, -1), 1).squeeze(-1).numpy()

    # ------------------------------------------------------------ scoring sampled tokens
    def score_tokens(self, rollout: Rollout, reference: bool = False, values: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Per response token (B, T): its log-probability, the entropy of the step's distribution and
        (values=True, policy only) the value of the state it was taken in; zeros past each end. On the model's
        device."""
        rollout = rollout.to(self.device)
        ids = torch.cat([rollout.query, rollout.response], 1)
        mask = torch.cat([rollout.query_mask, rollout.response_mask], 1)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        Q, T = rollout.query.shape[1], rollout.response.shape[1]
        grad = torch.no_grad() if reference else nullcontext()
        with grad, self._network(reference) as net:
            decoder, head = _decoder_and_head(net)
            hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
            states = hidden[:, Q - 1:Q + T - 1]  # the state before each response token
            logp_all = torch.log_softmax(head(states).float() / self.temperature, -1)
        logprobs = logp_all.gather(-1, rollout.response[..., None]).squeeze(-1)
        with torch.no_grad():  # a diagnostic: no entropy bonus (the KL penalty keeps the policy spread)
            entropy = -(logp_all.exp() * logp_all).sum(-1)
        m = rollout.response_mask.to(logprobs.dtype)
        value = None
        if values:
            if self.value_head is None or reference:
                raise RuntimeError("values come from the policy's value head, which this policy lacks")
            value = self.value_head(states.float()).squeeze(-1) * m
        return logprobs * m, entropy * m, value

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """Only what training changes: trainable parameters (LoRA adapters or the LM) and the head."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in super().state_dict(*args, **kwargs).items() if k in trainable}

    def prune_checkpoint(self, checkpoint: dict[str, Any], prefix: str) -> None:
        """Drop from a Lightning checkpoint's state_dict (this policy under `prefix`) the frozen weights:
        a resumed fit rebuilds them from the model it started from (with LoRA, all but the adapters)."""
        trainable = {f"{prefix}{name}" for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if not k.startswith(prefix) or k in trainable}

    def save(self, path: Path) -> dict[str, Any]:
        """A save_pretrained folder at `path` (module docstring); returns the node load_text_policy takes."""
        path.mkdir(parents=True, exist_ok=True)
        if self.uses_lora:
            self.lm.save_pretrained(path / "adapter")  # the adapters alone (peft's format)
            merged = copy.deepcopy(self.lm).merge_and_unload()
            merged.save_pretrained(path)
        else:
            self.lm.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        if self.value_head is not None:
            torch.save(self.value_head.state_dict(), path / "value_head.pt")
        reference = self.origin if self.has_reference else None
        if reference is not None and Path(reference).parent.resolve() == path.parent.resolve():
            reference = Path(reference).name  # beside it (checkpoints/sft): kept relative, so a moved run loads
        return {"_target_": "plugins.policies.text.load_text_policy", "path": path.name, "reference": reference,
                "max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "batch_size": self.batch_size}


def sample_tokens(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of probs (B, V), drawn with `generator` (on the CPU, whose state a checkpoint keeps: the
    rows go there to be drawn where the model is elsewhere, so a seed draws the same random numbers on any device)."""
    if generator is None or generator.device == probs.device:
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(probs.device)


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Stack rollouts row-wise, left-padding queries and right-padding responses to a common width."""
    Q = max(p.query.shape[1] for p in parts)
    T = max(p.response.shape[1] for p in parts)

    def widen(x: torch.Tensor, width: int, value: int, left: bool) -> torch.Tensor:
        extra = torch.full((x.shape[0], width - x.shape[1]), value, dtype=x.dtype, device=x.device)
        return torch.cat([extra, x] if left else [x, extra], 1)

    return Rollout(torch.cat([widen(p.query, Q, pad_id, True) for p in parts]),
                   torch.cat([widen(p.query_mask, Q, 0, True) for p in parts]),
                   torch.cat([widen(p.response, T, pad_id, False) for p in parts]),
                   torch.cat([widen(p.response_mask, T, 0, False) for p in parts]))


def build_text_policy(model: str, max_new_tokens: int, temperature: float = 1.0, value_head: bool = False,
                      lora: LoraSettings | None = None, batch_size: int = 32, reference: bool = True) -> TextPolicy:
    """Load `model` (a hub id, a packaged model or a local folder; plugins/lm.py) as a TextPolicy
    in training mode; the LM's own dropout (none in SmolLM2) stays as configured."""
    lm, tokenizer = load_causal_lm(model)
    return TextPolicy(lm, tokenizer, max_new_tokens, temperature, value_head, lora, reference, batch_size,
                      origin=model)


def load_text_policy(path: str, reference: str | None, max_new_tokens: int, temperature: float = 1.0,
                     batch_size: int = 32, **spaces: Any) -> TextPolicy:
    """A policy `TextPolicy.save` wrote (its folder `path`), measured against `reference` (the model it
    started from: a name, a folder, or a folder beside `path`) where that is known; its value head too,
    if it had one. `spaces`: the task's spaces (unused: a language model's come with its tokenizer)."""
    lm, tokenizer = load_causal_lm(path)
    if reference is not None and (Path(path).parent / reference).is_dir():
        reference = str(Path(path).parent / reference)
    reference_lm = load_causal_lm(reference)[0] if reference is not None else None
    head = Path(path) / "value_head.pt"
    policy = TextPolicy(lm, tokenizer, max_new_tokens, temperature, value_head=head.exists(), reference=False,
                        batch_size=batch_size, origin=path, reference_lm=reference_lm)
    if policy.value_head is not None:
        policy.value_head.load_state_dict(torch.load(head, map_location="cpu"))
    return policy.eval()
