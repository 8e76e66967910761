"""Per-rank memory and MiLoRA's init time under DDP, ZeRO-2, ZeRO-3 and FSDP2, measured in one run.

    .venv/bin/python bench/bench_engines.py [--hidden 1024 --intermediate 2816 --layers 4 --rank 32]

For each engine, one 2-process CPU run (gloo) of tests/engine_run.py, MiLoRA + DropLoRA through
TRL's SFTTrainer, on a random Llama of the given shape (the demo's tokenizer): the bytes each
rank holds after training of frozen parameters, trainable (LoRA) parameters and optimizer state
(Adam's moments plus DeepSpeed's fp32 master partitions), counted from the tensors themselves
(ZeRO-3 partitions, FSDP2 local shards), with no torch.cuda; and MiLoRA's init time as it logs it.
Activations, gradients and communication buffers are not counted. Ratios are to DDP, measured in
the same run. Then an on-paper estimate of the same three terms for Llama-2-7B and Llama-2-70B
with LoRA r = 32 on the paper recipes' targets, bf16 base, 8 GPUs.

The CPU set-up that makes these engines run on CPU lives in tests/engine_run.py; a GPU run
needs none of it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ["ddp", "zero2", "zero3", "fsdp2"]
TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]  # the paper recipes' targets
# (hidden, intermediate, layers, attention heads, key/value heads, vocabulary)
LLAMA2 = {"Llama-2-7B": (4096, 11008, 32, 32, 32, 32000), "Llama-2-70B": (8192, 28672, 80, 64, 8, 32000)}


def make_model(folder: Path, hidden: int, intermediate: int, layers: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from axolotl_droplora.demo.task import make_demo

    demo = make_demo(folder / "demo").parent
    model_dir = folder / "model"
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=512,
    )
    LlamaForCausalLM(config).save_pretrained(model_dir)
    for name in os.listdir(demo / "model"):
        if name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(demo / "model" / name, model_dir / name)
    return model_dir


def run(engine: str, model_dir: Path, out: Path, rank: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "ENGINE_RUN_LORA_R": str(rank)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(ROOT / "tests" / "engine_run.py"),
            engine,
            "milora",
            str(model_dir),
            str(out),
            "1e-4",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        sys.exit(f"{engine} failed:\n{(done.stdout + done.stderr)[-4000:]}")
    return json.loads((out / "run.json").read_text())


def on_paper(shape: tuple, rank: int = 32, gpus: int = 8) -> dict[str, dict[str, float]]:
    """GB per GPU of frozen base, LoRA weights + gradients, and optimizer state (Adam)."""
    hidden, intermediate, layers, heads, kv_heads, vocab = shape
    kv = hidden * kv_heads // heads
    linear = {
        "q_proj": (hidden, hidden),
        "k_proj": (kv, hidden),
        "v_proj": (kv, hidden),
        "o_proj": (hidden, hidden),
        "gate_proj": (intermediate, hidden),
        "up_proj": (intermediate, hidden),
        "down_proj": (hidden, intermediate),
    }
    base = 2 * vocab * hidden + layers * (sum(o * i for o, i in linear.values()) + 2 * hidden) + hidden
    lora = layers * sum(rank * (o + i) for name, (o, i) in linear.items() if name in TARGETS)
    gb = 1e9
    # bf16 base (2 bytes). DDP: fp32 LoRA weights and gradients (PEFT keeps adapters in fp32 under
    # autocast), Adam moments 8 bytes. DeepSpeed bf16: the module in bf16 (2 + 2 bytes of
    # gradient) and fp32 master + moments (12 bytes) in the optimizer; ZeRO-2 splits the
    # gradients and optimizer state, ZeRO-3 also the weights. FSDP2 (mixed precision): fp32
    # sharded weights, gradients and moments.
    return {
        "ddp": {"frozen": 2 * base / gb, "lora": 8 * lora / gb, "optimizer": 8 * lora / gb},
        "zero2": {"frozen": 2 * base / gb, "lora": (2 + 2 / gpus) * lora / gb, "optimizer": 12 * lora / gpus / gb},
        "zero3": {"frozen": 2 * base / gpus / gb, "lora": 4 * lora / gpus / gb, "optimizer": 12 * lora / gpus / gb},
        "fsdp2": {"frozen": 2 * base / gpus / gb, "lora": 8 * lora / gpus / gb, "optimizer": 8 * lora / gpus / gb},
        "params": {"base": base / 1e9, "lora": lora / 1e6},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = make_model(Path(scratch), args.hidden, args.intermediate, args.layers)
        runs = {engine: run(engine, model_dir, Path(scratch) / engine, args.rank) for engine in ENGINES}
    print(
        f"2 processes on CPU, random Llama hidden {args.hidden}, intermediate {args.intermediate}, "
        f"{args.layers} layers, LoRA r = {args.rank} on q, v, down (MiLoRA + DropLoRA), float32"
    )
    print(
        f"{'engine':7} {'frozen MB':>10} {'LoRA MB':>9} {'optim MB':>9}   ratios to DDP (frozen, LoRA, optim)   "
        f"MiLoRA init s"
    )
    ddp = runs["ddp"]["memory"][0]
    for engine, result in runs.items():
        held = result["memory"][0]  # rank 0; rank 1 holds the same within a partition's rounding
        ratios = ", ".join(f"{held[k] / ddp[k]:.2f}" for k in ("frozen", "trainable", "optimizer"))
        print(
            f"{engine:7} {held['frozen'] / 1e6:10.2f} {held['trainable'] / 1e6:9.3f} {held['optimizer'] / 1e6:9.3f}"
            f"   {ratios:37} {result['init_seconds']:.2f}"
        )
    print("\nOn paper, GB per GPU, 8 GPUs, bf16 base, LoRA r = 32 on q, k, v, up, down, Adam (no activations):")
    for model, shape in LLAMA2.items():
        estimate = on_paper(shape)
        params = estimate.pop("params")
        print(f"{model} ({params['base']:.2f} B parameters, LoRA {params['lora']:.1f} M):")
        for engine, terms in estimate.items():
            print(
                f"  {engine:6} frozen {terms['frozen']:7.2f}  LoRA {terms['lora']:5.2f}  optimizer "
                f"{terms['optimizer']:5.2f}  total {sum(terms.values()):7.2f}"
            )


if __name__ == "__main__":
    main()
