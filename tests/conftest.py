"""Shared fixtures: tiny local models and the demo folder; nothing touches the network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # scripts/test.sh starts a worker per core: more threads only contend
    os.environ.setdefault("OMP_NUM_THREADS", "1")

VENV_BIN = str(Path(sys.executable).parent)


def tiny_base_model(seed: int = 0, hidden_size: int = 32):
    """A 2-layer random Llama; the same seed gives the same weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=128,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )


def tiny_lora_model(seed: int = 0, lora_dropout: float = 0.0, **lora_kwargs):
    """tiny_base_model(seed) in PEFT LoRA with non-zero B (so every path is exercised)."""
    from peft import LoraConfig, get_peft_model

    base = tiny_base_model(seed)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=lora_dropout,
        init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
        **lora_kwargs,
    )
    return get_peft_model(base, config)


def run_cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command the way a user does, with the venv's tools on PATH and no network."""
    env = {
        **os.environ,
        "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
        "HF_HUB_OFFLINE": "1",
        "AXOLOTL_DO_NOT_TRACK": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from axolotl_droplora.demo.task import make_demo

    return make_demo(tmp_path_factory.mktemp("demo")).parent
