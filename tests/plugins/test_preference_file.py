"""preference=file: the JSONL formats, and an error naming file, line and field for each malformed line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.types import Response
from plugins.preferences.file import PreferenceFile, PreferenceFileError, read_preference_file

PAIR = {"prompt": "Say hi.", "chosen": "Hello there!", "rejected": "Go away.", "annotator": "a1", "margin": 2}
RANKING = {"prompt": "Rate it.", "responses": ["ok", "best", "worst"], "ranking": [1, 0, 2]}
CORRECTION = {"prompt": "Fix it.", "responses": ["fixed by a person", "model draft", "worse draft"],
              "ranking": [0, 1, 2], "correction": True}


def write(tmp_path: Path, *lines: object) -> Path:
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def texts(prefs, pairs) -> list[tuple[str, str]]:
    return [(prefs.items[i].text, prefs.items[j].text) for i, j in pairs]


def test_pair_ranking_and_correction_lines_give_responses_and_their_pairs(tmp_path: Path) -> None:
    prefs = read_preference_file(write(tmp_path, PAIR, "", RANKING, CORRECTION))
    assert all(isinstance(r, Response) for r in prefs.items) and len(prefs.items) == 2 + 3 + 3
    assert len(prefs.pairs) == 1 + 3 + 3  # a ranking of 3 gives its 3 choose 2 pairs
    got = texts(prefs, prefs.pairs)
    assert got[0] == ("Hello there!", "Go away.")
    assert got[1:4] == [("best", "ok"), ("best", "worst"), ("ok", "worst")]
    assert got[4:] == [("fixed by a person", "model draft"), ("fixed by a person", "worse draft"),
                       ("model draft", "worse draft")]
    assert prefs.items[0].info == {"line": 1, "annotator": "a1", "margin": 2.0}
    assert prefs.items[2].info["line"] == 3 and prefs.items[2].prompt == "Rate it."  # blank line 2 skipped
    assert prefs.items[5].info.get("corrected") and not prefs.items[6].info.get("corrected")
    assert prefs.scores is None


def test_gather_reads_the_configured_path(tmp_path: Path) -> None:
    prefs = PreferenceFile(str(write(tmp_path, PAIR))).gather(None, None)  # type: ignore[arg-type]
    np.testing.assert_array_equal(prefs.pairs, [[0, 1]])


@pytest.mark.parametrize(("line", "expected"), [
    ('{"prompt": "p", "chosen": "a", ', "not valid JSON"),
    ('["prompt", "chosen"]', "line: must be a JSON object, got list"),
    ({"prompt": "p", "chosen": "a"}, "field 'rejected': missing"),
    ({"chosen": "a", "rejected": "b"}, "field 'prompt': missing"),
    ({"prompt": "p"}, "field 'chosen': missing: a line is a pair"),
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, "field 'prompt': must be a string, got int"),
    ({"prompt": "p", "chosen": "a", "rejected": ["b"]}, "field 'rejected': must be a string, got list"),
    ({"prompt": "p", "chosen": "  ", "rejected": "b"}, "field 'chosen': empty"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}, "field 'margin': must be a finite number"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "annotator": None}, "field 'annotator': must be a string"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "rejcted": "c"}, "field 'rejcted': unknown here"),
    ({"prompt": "p", "chosen": "a", "responses": ["a", "b"]}, "mixes a pair's fields"),
    ({"prompt": "p", "responses": ["a", "b"]}, "field 'ranking': missing"),
    ({"prompt": "p", "responses": ["a"], "ranking": [0]}, "field 'responses': must be a list of at least 2"),
    ({"prompt": "p", "responses": ["a", ""], "ranking": [0, 1]}, "field 'responses[1]': empty"),
    ({"prompt": "p", "responses": ["a", 7], "ranking": [0, 1]}, "field 'responses[1]': must be a string"),
    ({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 0, 2]}, "missing [1]; out of range or repeated [0]"),
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 2]}, "field 'ranking': must order each of the 2"),
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [0]}, "missing [1]"),
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, True]}, "field 'ranking': must be a list of"),
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0], "correction": True},
     "field 'ranking': a correction's responses[0]"),
    ({"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1], "correction": "yes"}, "field 'correction'"),
])
def test_a_malformed_line_is_named_with_file_line_and_field(tmp_path: Path, line: object, expected: str) -> None:
    path = write(tmp_path, PAIR, RANKING, line)
    with pytest.raises(PreferenceFileError) as err:
        read_preference_file(path)
    message = str(err.value)
    assert f"{path}:3: " in message and expected in message, message
    assert "nothing was read" in message


def test_every_malformed_line_is_listed_and_nothing_is_returned(tmp_path: Path) -> None:
    path = write(tmp_path, PAIR, "{oops", PAIR, {"prompt": "p", "chosen": ""}, PAIR)
    with pytest.raises(PreferenceFileError, match="2 malformed line") as err:
        read_preference_file(path)
    assert f"{path}:2: not valid JSON" in str(err.value) and f"{path}:4: field 'chosen': empty" in str(err.value)


def test_bytes_that_are_not_utf8_are_named_by_line(tmp_path: Path) -> None:
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(json.dumps(PAIR).encode() + b"\n\xff\xfe\n")
    with pytest.raises(PreferenceFileError, match=r"prefs.jsonl:2: not UTF-8"):
        read_preference_file(path)


def test_a_missing_or_empty_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PreferenceFileError, match="no such file"):
        read_preference_file(tmp_path / "nope.jsonl")
    with pytest.raises(PreferenceFileError, match="needs at least 1 preference, has 0"):
        read_preference_file(write(tmp_path, "", "  "))


def test_the_readme_examples_are_read_as_documented(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("```jsonl\n", 1)[1].split("```", 1)[0]
    prefs = read_preference_file(write(tmp_path, *block.splitlines()))
    assert len(prefs.items) == 2 + 3 + 2 and len(prefs.pairs) == 1 + 3 + 1
    assert prefs.items[5].info.get("corrected")


def test_the_hh_rlhf_layout_reads_with_the_shared_dialogue_as_the_prompt(tmp_path: Path) -> None:
    turns = "\n\nHuman: Hi, can you help me plan a trip?\n\nAssistant: Sure, where to?\n\nHuman: Lisbon, in May."
    lines = [{"chosen": turns + "\n\nAssistant: May is lovely there; three days covers the centre.",
              "rejected": turns + "\n\nAssistant: Plan it yourself."},
             {"chosen": "\n\nHuman: Tell me a joke.\n\nAssistant: Why did the chicken cross the road?",
              "rejected": "\n\nHuman: Tell me a joke.\n\nAssistant: No."}]
    prefs = read_preference_file(write(tmp_path, *lines))
    first, second = prefs.items[0], prefs.items[1]
    assert first.prompt == second.prompt == turns + "\n\nAssistant:"  # earlier turns kept
    assert (first.text, second.text) == (" May is lovely there; three days covers the centre.", " Plan it yourself.")
    assert prefs.items[2].prompt == "\n\nHuman: Tell me a joke.\n\nAssistant:" and prefs.items[3].text == " No."
    np.testing.assert_array_equal(prefs.pairs, [[0, 1], [2, 3]])
    with pytest.raises(PreferenceFileError, match=r":1: field 'prompt': missing; a pair without one must be two "
                                                  r"dialogues in the HH-RLHF layout"):
        read_preference_file(write(tmp_path, {"chosen": "Great film.", "rejected": "Bad film."}))
