"""A local language model as the judge of AI feedback (Bai et al. 2022, "Constitutional AI", section 4.1).

The judge reads a multiple-choice question: the conversation (the prompt), a principle's comparison question, the
two responses as options (A) and (B), and then the start of its answer, "The answer is: (". The probabilities of
the option tokens "A" and "B" at that point, renormalised over the two, are its verdict; as the paper, no sampling
is involved. Both orders are asked: with p1 = P(A) when the first response is (A) and p2 = P(A) when it is (B),
P(first better) = (p1 + 1 - p2) / 2, which cancels a judge's preference for a slot, and (p1 + p2) / 2 is that
preference (0.5: none), logged as preference/position_bias.

Options: `chain_of_thought` lets the judge first write its reasoning after "Let's think step by step:" (greedy, at
most `cot_tokens` tokens), then scores the options after it; as the paper, such probabilities are clamped to
[0.4, 0.6], since a chain of thought makes the verdict nearly certain and poorly calibrated. `few_shot` prepends
worked examples (a JSONL file of {"prompt", "first", "second", "question", "answer": "A" or "B"} lines). The model
is any causal LM by name or folder (default SmolLM2-135M-Instruct); where its tokenizer has a chat template
(`chat_template`), the question is its user turn and the answer's start the assistant's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import NamedError
from core.interfaces import Judge, Judgements
from core.jsonl import RecordError, exact_fields, json_object, read_jsonl, text_field
from core.schema import PositiveInt
from plugins.lm import SMOLLM2, load_causal_lm

ANSWER = "The answer is: ("
THINK = "Let's think step by step:"
AFTER_THOUGHT = "\nSo the answer is: ("
CLAMP = (0.4, 0.6)
"""Chain-of-thought verdicts are clamped to this range (Bai et al. 2022, section 4.1)."""


class FewShotFileError(NamedError, ValueError):
    """A judge's few-shot file that cannot be read whole; the message names file, line and field."""


def read_examples(path: str | Path) -> list[dict[str, str]]:
    """JSONL {"prompt", "first", "second", "question", "answer": "A"|"B"} lines -> the worked examples."""

    def parse(value: Any, line: int) -> dict[str, str]:
        record = json_object(value, '{"prompt": ..., "first": ..., "second": ..., "question": ..., "answer": "A"}')
        fields = ("prompt", "first", "second", "question", "answer")
        exact_fields(record, fields)
        out = {f: text_field(record, f) for f in fields}
        if out["answer"] not in ("A", "B"):
            raise RecordError("answer", f'must be "A" or "B", got {out["answer"]!r}')
        return out

    return read_jsonl(path, "preference.few_shot", parse, FewShotFileError)


def question(prompt: str, a: str, b: str, ask: str) -> str:
    """The multiple-choice question about responses a and b to `prompt`."""
    return (f"Consider this conversation between a person and an assistant.\n\nPerson: {prompt}\n\n{ask}\n"
            f"Options:\n(A) {a}\n(B) {b}")


class LMJudge(Judge):
    """model: a causal LM (hub id, packaged model or folder); chain_of_thought: reason before the verdict;
    cot_tokens: the reasoning's length limit; few_shot: a file of worked examples (None: none); chat_template: use
    the tokenizer's chat template where it has one; batch_size: questions scored at once."""

    def __init__(self, model: str = SMOLLM2, chain_of_thought: bool = False, cot_tokens: PositiveInt = 64,
                 few_shot: str | None = None, chat_template: bool = True, batch_size: PositiveInt = 16) -> None:
        self.model_name, self.chain_of_thought, self.cot_tokens = model, chain_of_thought, cot_tokens
        self.batch_size = batch_size
        self.examples = read_examples(few_shot) if few_shot else []
        self.lm: Any
        self.lm, self.tokenizer = load_causal_lm(model)
        self.lm.eval()
        self.use_chat = chat_template and bool(getattr(self.tokenizer, "chat_template", None))
        self.options = [self._token(letter) for letter in ("A", "B")]

    def _token(self, letter: str) -> int:
        """The id of the option letter as the next token after "(" (its first token, for a tokenizer that splits)."""
        with_paren = self.tokenizer("(" + letter, add_special_tokens=False)["input_ids"]
        alone = self.tokenizer("(", add_special_tokens=False)["input_ids"]
        rest = with_paren[len(alone):] if with_paren[:len(alone)] == alone else \
            self.tokenizer(letter, add_special_tokens=False)["input_ids"]
        return int(rest[0])

    def _text(self, body: str, answer_start: str) -> str:
        """The whole text the judge reads before its answer: worked examples, then the question and answer start."""
        turns = [(question(ex["prompt"], ex["first"], ex["second"], ex["question"]), f"{ANSWER}{ex['answer']})")
                 for ex in self.examples]
        if self.use_chat:
            messages = []
            for q, a in turns:
                messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            messages.append({"role": "user", "content": body})
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return str(text) + answer_start
        shots = "".join(f"{q}\n{a}\n\n" for q, a in turns)
        return f"{shots}{body}\n{answer_start}"

    @torch.no_grad()
    def _next_token_logits(self, texts: list[str]) -> torch.Tensor:
        """texts -> the logits of the token after each (B, V), left-padded batches."""
        out = []
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        for start in range(0, len(texts), self.batch_size):
            ids = self.tokenizer(texts[start:start + self.batch_size], add_special_tokens=False)["input_ids"]
            longest = max(len(x) for x in ids)
            batch = torch.full((len(ids), longest), int(pad), dtype=torch.long)
            mask = torch.zeros_like(batch)
            for k, x in enumerate(ids):
                batch[k, longest - len(x):], mask[k, longest - len(x):] = torch.tensor(x), 1
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            logits = self.lm(input_ids=batch, attention_mask=mask, position_ids=positions).logits[:, -1].float()
            out.append(logits)
        return torch.cat(out)

    @torch.no_grad()
    def _reason(self, texts: list[str]) -> list[str]:
        """Greedy reasoning after each text, at most cot_tokens tokens, cut at the end-of-sequence token."""
        eos = self.tokenizer.eos_token_id
        out = []
        for text in texts:  # (one at a time: short, and no padding to get wrong)
            ids = torch.tensor([self.tokenizer(text, add_special_tokens=False)["input_ids"]])
            generated = self.lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.cot_tokens,
                                         do_sample=False, pad_token_id=eos)[0, ids.shape[1]:]
            out.append(str(self.tokenizer.decode(generated, skip_special_tokens=True)).strip())
        return out

    def _p_a(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str], asks: Sequence[str]
             ) -> tuple[np.ndarray, list[str | None]]:
        """P(option A) for each question, renormalised over the two option tokens, and the reasoning."""
        bodies = [question(p, x, y, q) for p, x, y, q in zip(prompts, a, b, asks, strict=True)]
        rationales: list[str | None] = [None] * len(bodies)
        if self.chain_of_thought:
            thoughts = self._reason([self._text(body, THINK) for body in bodies])
            texts = [self._text(body, f"{THINK} {t}{AFTER_THOUGHT}") for body, t in zip(bodies, thoughts, strict=True)]
            rationales = list(thoughts)
        else:
            texts = [self._text(body, ANSWER) for body in bodies]
        logits = self._next_token_logits(texts)[:, self.options]
        p = torch.softmax(logits, -1)[:, 0].numpy().astype(np.float64)
        if self.chain_of_thought:
            p = np.clip(p, *CLAMP)
        return p, rationales

    def judge(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
              questions: Sequence[str]) -> Judgements:
        p1, why1 = self._p_a(prompts, first, second, questions)  # first response in slot A
        p2, _ = self._p_a(prompts, second, first, questions)  # first response in slot B
        return Judgements(probability=(p1 + 1.0 - p2) / 2.0, first_slot=(p1 + p2) / 2.0, rationales=why1)
