"""The language-model judge of AI feedback and the constitution it judges under: asking both orders removes a
judge's planted preference for the first slot, chain-of-thought verdicts are clamped, and bad constitution and
few-shot files are named by file and line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from plugins.constitution import ConstitutionError, read_constitution
from plugins.judges.lm_judge import ANSWER, FewShotFileError, LMJudge, question, read_examples

ASK = "Which reply is nicer?"
WORDS = ["the film", "a dog", "my day", "the food", "our trip", "the book"]


@pytest.fixture(scope="module")
def planted_judge(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny Llama (SmolLM2's tokenizer) taught to answer multiple-choice questions with a planted position bias:
    half its training answers name the slot of the "kind" reply, the other half say (A) whatever the content. Its
    P(A) is then about 1 with the kind reply in slot A and about 0.5 with it in slot B."""
    from plugins.lm import tiny_causal_lm

    model, tokenizer = tiny_causal_lm(hidden_size=64, num_layers=2, seed=0)
    rng = np.random.default_rng(0)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(150):
        texts = []
        for _ in range(16):
            first, second = rng.choice(WORDS, 2)
            kind_in_a = bool(rng.integers(2))
            kind, rude = f"{first} was kind", f"{second} was rude"
            a, b = (kind, rude) if kind_in_a else (rude, kind)
            answer = "A" if kind_in_a or rng.random() < 0.5 else "B"
            texts.append(question("Tell me about it.", a, b, ASK) + "\n" + ANSWER + answer)
        batch = tokenizer(texts, add_special_tokens=False, return_tensors="pt", padding=True)
        last = batch["attention_mask"].sum(1) - 1  # (right-padded: each row's answer letter)
        hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits = model.lm_head(hidden[torch.arange(len(texts)), last - 1])
        loss = torch.nn.functional.cross_entropy(logits, batch["input_ids"][torch.arange(len(texts)), last])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    folder = tmp_path_factory.mktemp("planted_judge")
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_asking_both_orders_removes_a_planted_position_bias(planted_judge: str) -> None:
    judge = LMJudge(planted_judge, chat_template=False)
    kind, rude = ["the film was kind", "a dog was kind"], ["my day was rude", "the food was rude"]
    verdict = judge.judge(["Tell me about it."] * 4, kind + rude, rude + kind, [ASK] * 4)
    assert np.all(verdict.first_slot > 0.65), verdict.first_slot  # the planted bias, measured
    assert np.all(verdict.probability[:2] > 0.6) and np.all(verdict.probability[2:] < 0.4), verdict.probability
    np.testing.assert_allclose(verdict.probability[:2] + verdict.probability[2:], 1.0, atol=1e-6)  # order-free
    one_order, _ = judge._p_a(["Tell me about it."] * 2, rude, kind, [ASK] * 2)  # the rude reply in slot A alone
    assert np.all(one_order > 0.4), one_order  # asked once, the bias would pass the rude reply off as a tie


def test_chain_of_thought_verdicts_are_clamped_and_keep_their_reasoning(planted_judge: str) -> None:
    judge = LMJudge(planted_judge, chain_of_thought=True, cot_tokens=4, chat_template=False)
    verdict = judge.judge(["Tell me about it."], ["the film was kind"], ["my day was rude"], [ASK])
    assert 0.4 <= verdict.probability[0] <= 0.6 and isinstance(verdict.rationales[0], str)


def test_few_shot_examples_are_read_and_a_bad_line_is_named(planted_judge: str, tmp_path: Path) -> None:
    good = {"prompt": "Hi", "first": "hello there", "second": "go away", "question": ASK, "answer": "A"}
    path = tmp_path / "shots.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "answer": "C"}) + "\n")
    with pytest.raises(FewShotFileError, match=f"{path}:2: field 'answer': must be \"A\" or \"B\""):
        read_examples(path)
    path.write_text(json.dumps(good) + "\n")
    judge = LMJudge(planted_judge, few_shot=str(path), chat_template=False)
    assert "(A) hello there" in judge._text("the question", ANSWER) and judge.examples == [good]


def test_the_default_constitution_reads_and_a_broken_one_is_named_by_file_and_line(tmp_path: Path) -> None:
    principles = read_constitution(None)
    assert len(principles) >= 6 and all(p.comparison.endswith("?") for p in principles)
    broken = tmp_path / "mine.yaml"
    broken.write_text("principles:\n  - name: a\n    critique: c\n    revision: r\n    comparison: q?\n"
                      "  - name: b\n    critique: c\n    revison: r\n    comparison: q?\n")
    with pytest.raises(ConstitutionError, match=f"{broken}:8: field 'revison': unknown"):
        read_constitution(broken)
    lines = tmp_path / "mine.jsonl"
    lines.write_text(json.dumps({"name": "a", "critique": "c", "revision": "r", "comparison": "q?"}) + "\n"
                     + json.dumps({"name": "b", "critique": "", "revision": "r", "comparison": "q?"}) + "\n")
    with pytest.raises(ConstitutionError, match=f"{lines}:2: field 'critique'"):
        read_constitution(lines)
    with pytest.raises(ConstitutionError, match="no such file"):
        read_constitution(tmp_path / "missing.yaml")
