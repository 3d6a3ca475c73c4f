"""How a prompt is put to a language model (env.template, env.examples, env.chat_template): the text the model
continues, while the prompt itself stays the key that data files, reward models, judges and gold scorers read.

Templates (the policy's prompting baselines, Brown et al. 2020 and Kojima et al. 2022):
- plain: the prompt as it is;
- few_shot: worked examples (a JSONL file of {"prompt", "response"} lines, env.examples) as earlier turns of the
  conversation, then the prompt;
- cot: the prompt followed by a request to reason first ("Let's think step by step.", Kojima et al.'s zero-shot
  chain of thought). The response length limit (env.max_new_tokens) bounds the reasoning.

With `chat_template` on, the prompt is a conversation's last turn: through the tokenizer's chat template where it
has one (SmolLM2-Instruct does: its system line, "<|im_start|>user ... <|im_end|>", then the assistant's opening), so
an instruct model answers as it was tuned to, else as "Human: ... / Assistant:" turns (Bai et al. 2022's layout).
With it off (text to continue, as the review openings), the model gets plain text: the prompt alone (plain), or
"Question: ... / Answer: ..." blocks for the examples (few_shot).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from core.errors import NamedError
from core.jsonl import exact_fields, json_object, read_jsonl, text_field

EXAMPLES = Path(__file__).resolve().parent / "data" / "prompt_examples.jsonl"
STEP_BY_STEP = "Let's think step by step."
Template = Literal["plain", "few_shot", "cot"]


class ExamplesFileError(NamedError, ValueError):
    """A few-shot examples file that cannot be read whole; the message names file, line and field."""


def read_examples(path: str | Path, key: str = "env.examples") -> list[tuple[str, str]]:
    """A JSONL file of {"prompt": str, "response": str} lines -> (prompt, response) pairs in file order."""

    def parse(value: Any, line: int) -> tuple[str, str]:
        record = json_object(value, '{"prompt": ..., "response": ...}')
        exact_fields(record, ("prompt", "response"))
        return text_field(record, "prompt"), text_field(record, "response")

    return read_jsonl(path, key, parse, ExamplesFileError, minimum=1, needs="at least 1 example")


def conversation(tokenizer: Any, turns: Sequence[str], chat_template: bool = True) -> str:
    """The text a model continues for the next assistant turn: turns alternate person, assistant, person, ... (an odd
    number, ending with the person's), through the tokenizer's chat template where it has one and `chat_template`
    is on, else as "Human: / Assistant:" turns (Bai et al. 2022's layout)."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user" if k % 2 == 0 else "assistant", "content": t} for k, t in enumerate(turns)]
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    lines = [f"{'Human' if k % 2 == 0 else 'Assistant'}: {t}" for k, t in enumerate(turns)]
    return "\n\n".join(lines) + "\n\nAssistant:"


class PromptFormat:
    """prompt -> the text the model continues, under a template (plain, few_shot, cot); module docstring.
    tokenizer: the model's (its chat template); examples: the few-shot file, read only for few_shot (the assistant
    task's default is plugins/data/prompt_examples.jsonl: EXAMPLES)."""

    def __init__(self, tokenizer: Any, template: Template = "plain", examples: str | Path | None = None,
                 chat_template: bool = True) -> None:
        if template not in ("plain", "few_shot", "cot"):
            raise ValueError(f"env.template={template!r}: one of plain, few_shot, cot")
        if template == "few_shot" and examples is None:
            raise ValueError("env.template=few_shot needs worked examples: env.examples=FILE.jsonl ({\"prompt\", "
                             "\"response\"} lines; this task bundles none)")
        self.tokenizer, self.template, self.chat, self.examples_path = tokenizer, template, chat_template, examples
        self.examples = read_examples(examples) if template == "few_shot" and examples is not None else []

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        return [self.one(p) for p in prompts]

    def one(self, prompt: str) -> str:
        if self.template == "cot":
            prompt = f"{prompt}\n{STEP_BY_STEP}"
        if not self.chat:  # a continuation: the prompt itself, after any examples
            shots = "".join(f"Question: {p}\nAnswer: {r}\n\n" for p, r in self.examples)
            return f"{shots}Question: {prompt}\nAnswer:" if shots else prompt
        return conversation(self.tokenizer, [t for p, r in self.examples for t in (p, r)] + [prompt])
