"""How prompts reach the model (env.template, env.examples, env.chat_template): the chat template where the
tokenizer has one, plain continuation without it, few-shot examples before the prompt, the chain-of-thought cue, and
the prompt itself everywhere else (gold, data); a bad examples file named by file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plugins.assistant_gold import AssistantGold
from plugins.envs.text import TextEnv
from plugins.lm import load_causal_lm
from plugins.prompt_format import EXAMPLES, STEP_BY_STEP, ExamplesFileError, PromptFormat, conversation


class Plain:
    chat_template = None


def test_the_conversation_uses_the_chat_template_where_the_tokenizer_has_one(tiny_lm_dir: str) -> None:
    _, tokenizer = load_causal_lm(tiny_lm_dir)
    text = conversation(tokenizer, ["Hi", "Hello!", "Critique that."])
    assert "<|im_start|>user" in text and text.rstrip().endswith("assistant")
    assert conversation(Plain(), ["Hi", "Hello!", "Critique that."]).endswith(
        "Human: Hi\n\nAssistant: Hello!\n\nHuman: Critique that.\n\nAssistant:")


def test_templates_put_the_prompt_last_after_the_examples_or_before_the_cue(tiny_lm_dir: str, tmp_path: Path) -> None:
    _, tokenizer = load_causal_lm(tiny_lm_dir)
    examples = tmp_path / "shots.jsonl"
    examples.write_text(json.dumps({"prompt": "What is 2+2?", "response": "Four."}) + "\n")
    assert PromptFormat(Plain(), "plain", chat_template=False)(["Tell me a story"]) == ["Tell me a story"]  # raw text
    assert PromptFormat(Plain(), "plain").one("Hi") == "Human: Hi\n\nAssistant:"  # a conversation, with no template
    chat = PromptFormat(tokenizer, "plain").one("Tell me a story")
    assert "<|im_start|>user\nTell me a story<|im_end|>" in chat and chat.endswith("<|im_start|>assistant\n")
    assert PromptFormat(tokenizer, "plain", chat_template=False).one("Tell me a story") == "Tell me a story"
    shots = PromptFormat(tokenizer, "few_shot", str(examples)).one("Tell me a story")
    assert shots.index("What is 2+2?") < shots.index("Four.") < shots.index("Tell me a story")
    assert PromptFormat(Plain(), "few_shot", str(examples), False).one("Why?") == "Question: What is 2+2?\nAnswer: " \
                                                                                  "Four.\n\n" \
                                                                           "Question: Why?\nAnswer:"
    assert PromptFormat(Plain(), "cot", chat_template=False).one("Why?") == f"Why?\n{STEP_BY_STEP}"
    assert len(PromptFormat(Plain(), "few_shot", EXAMPLES).examples) >= 2  # the bundled examples read
    with pytest.raises(ValueError, match="env.examples=FILE"):  # the review task bundles none
        TextEnv(model=tiny_lm_dir, template="few_shot")


def test_the_env_presents_prompts_but_scores_and_splits_the_prompts_themselves(tiny_lm_dir: str) -> None:
    env = TextEnv(model=tiny_lm_dir, template="cot")  # the review task: text to continue, no chat template by default
    assert env.present(env.train_prompts[:2]) == [f"{p}\n{STEP_BY_STEP}" for p in env.train_prompts[:2]]
    assert "<|im_start|>" in TextEnv(model=tiny_lm_dir, chat_template=True).present(["Hi"])[0]
    assert "<|im_start|>" in TextEnv(model=tiny_lm_dir, gold=AssistantGold()).present(["Hi"])[0]  # an assistant task
    assert all(STEP_BY_STEP not in p for p in env.train_prompts + env.eval_prompts)
    assert env.eval_prompts == TextEnv(model=tiny_lm_dir).eval_prompts  # the split ignores the template
    assert env.gold(env.train_prompts[:1], ["great"])[0] > 0  # the gold reads the response, not the template


def test_a_bad_examples_file_is_named_by_file_line_and_field(tiny_lm_dir: str, tmp_path: Path) -> None:
    bad = tmp_path / "shots.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi", "response": "Hello"}) + "\n" + json.dumps({"prompt": "Hi"}) + "\n")
    with pytest.raises(ExamplesFileError, match=r"shots\.jsonl:2: field 'response'"):
        TextEnv(model=tiny_lm_dir, template="few_shot", examples=str(bad))
    with pytest.raises(ValueError, match="env.template='socratic'"):
        PromptFormat(Plain(), "socratic")  # type: ignore[arg-type]
