"""DropLoRA vs plain LoRA: training step time and memory, measured in one process.

    .venv/bin/python bench/bench_rank_dropout.py [--reps 15] [--mask-mode element]
    python bench/bench_rank_dropout.py --device cuda --dtype bfloat16 --sizes smollm2 7b-slice

For each model size, two copies of one PEFT LoRA model (one with rank dropout) take turns
(interleaved, so drift in machine load hits both alike) doing full AdamW training steps.
Prints the median step time of each and the ratio. Memory: the peak bytes of the tensors
alive during a step (activations, tensors saved for backward, gradients, temporaries, counted
at the allocator level by a dispatch-mode tracker) plus the weights and optimizer state, and
the ratio of those peaks. On CUDA the transient part is `torch.cuda.max_memory_allocated` during
the step minus what was allocated when it began (both models live on the device, so the raw peak
would count the other copy too). `--dtype` is the base model's (PEFT keeps the LoRA weights in
float32, as in bf16 training). Targets from the core issue: both ratios ≤ 1.02.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import weakref

import torch
from peft import LoraConfig, get_peft_model
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import LlamaConfig, LlamaForCausalLM

from axolotl_droplora import install_rank_dropout

SIZES = {
    "tiny (hidden 64, 2 layers, seq 128, batch 8)": dict(
        hidden=64, intermediate=128, layers=2, heads=4, seq=128, batch=8, rank=16
    ),
    "wide (hidden 1024, 4 layers, seq 256, batch 4)": dict(
        hidden=1024, intermediate=2816, layers=4, heads=16, seq=256, batch=4, rank=32
    ),
    # SmolLM2-135M's shapes (30 layers, 9 heads of 64, 3 KV heads, vocab 49152)
    "smollm2 (SmolLM2-135M shapes, seq 512, batch 8)": dict(
        hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, vocab=49152, seq=512, batch=8, rank=16
    ),
    # 4 decoder layers of Llama-2-7B at its training length (the embeddings are small here)
    "7b-slice (Llama-2-7B layers, 4 of them, seq 2048, batch 1)": dict(
        hidden=4096, intermediate=11008, layers=4, heads=32, seq=2048, batch=1, rank=32
    ),
}
ALIASES = {label.split(" ")[0]: label for label in SIZES}  # --sizes tiny wide smollm2 7b-slice


class PeakTensorMemory(TorchDispatchMode):
    """Bytes of storages created under the mode that are still alive, and their peak."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._counted: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and not tensor.is_meta:
                storage = tensor.untyped_storage()
                key = id(storage)
                if key not in self._counted:
                    self._counted.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, storage.nbytes())
        return out

    def _free(self, key: int, nbytes: int):
        self._counted.discard(key)
        self.live -= nbytes


def build(size: dict, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32):
    torch.manual_seed(seed)
    with torch.device(device):  # built in place: a 7B-wide slice is slow to initialise on the host
        base = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=size.get("vocab", 1024),
                hidden_size=size["hidden"],
                intermediate_size=size["intermediate"],
                num_hidden_layers=size["layers"],
                num_attention_heads=size["heads"],
                num_key_value_heads=size.get("kv_heads", size["heads"]),
                max_position_embeddings=size["seq"],
            )
        ).to(dtype)
    return get_peft_model(
        base,
        LoraConfig(
            r=size["rank"],
            lora_alpha=2 * size["rank"],
            lora_dropout=0.05,
            target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
        ),
    )


def training_step(model, optimizer, tokens):
    model(input_ids=tokens, labels=tokens).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def static_bytes(model, optimizer) -> int:
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    state = sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )
    return weights + state


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def peak_step_bytes(run: dict, tokens, device: str) -> int:
    """Peak bytes of the tensors alive during one training step, beyond those alive before it."""
    if device.startswith("cuda"):
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        training_step(run["model"], run["optimizer"], tokens)
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with PeakTensorMemory() as tracker:
        training_step(run["model"], run["optimizer"], tokens)
    return tracker.peak


def compare(
    size: dict, reps: int, p: float, mask_mode: str, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> dict:
    lora = build(size, device=device, dtype=dtype).train()
    droplora = copy.deepcopy(lora)
    install_rank_dropout(droplora, p=p, mask_mode=mask_mode)
    runs = {}
    for name, model in (("lora", lora), ("droplora", droplora)):
        optimizer = torch.optim.AdamW([w for w in model.parameters() if w.requires_grad], lr=1e-4)
        runs[name] = {"model": model, "optimizer": optimizer, "times": []}
    tokens = torch.randint(
        0, size.get("vocab", 1024), (size["batch"], size["seq"]), generator=torch.Generator().manual_seed(0)
    ).to(device)
    for run in runs.values():  # warm-up, and the optimizer state exists before measuring memory
        training_step(run["model"], run["optimizer"], tokens)
    for _ in range(reps):
        for run in runs.values():
            synchronize(device)
            start = time.perf_counter()
            training_step(run["model"], run["optimizer"], tokens)
            synchronize(device)
            run["times"].append(time.perf_counter() - start)
    for run in runs.values():
        run["memory"] = static_bytes(run["model"], run["optimizer"]) + peak_step_bytes(run, tokens, device)
        run["step_s"] = statistics.median(run["times"])
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--p", type=float, default=0.3)
    parser.add_argument("--mask-mode", default="element")
    parser.add_argument(
        "--sizes",
        nargs="*",
        default=["tiny", "wide"],
        metavar="SIZE",
        help=f"any of {', '.join(ALIASES)} (or a full label); default: tiny wide",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="the base model's dtype (default float32)",
    )
    args = parser.parse_args()
    labels = [ALIASES.get(name, name) for name in args.sizes]
    unknown = [name for name, label in zip(args.sizes, labels) if label not in SIZES]
    if unknown:
        parser.error(f"--sizes: unknown {', '.join(unknown)}; choose from {', '.join(ALIASES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    where = (
        f"{torch.cuda.get_device_name(args.device)}"
        if args.device.startswith("cuda")
        else f"{torch.get_num_threads()} threads"
    )
    print(
        f"torch {torch.__version__}, {args.device} ({where}), {args.dtype}, p={args.p}, "
        f"mask_mode={args.mask_mode}, {args.reps} interleaved steps each"
    )
    print(
        "| model | LoRA step (s) | DropLoRA step (s) | time ratio | LoRA peak (MiB) | DropLoRA peak (MiB) "
        "| memory ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for label in labels:
        runs = compare(SIZES[label], args.reps, args.p, args.mask_mode, args.device, getattr(torch, args.dtype))
        lora, drop = runs["lora"], runs["droplora"]
        print(
            f"| {label} | {lora['step_s']:.4f} | {drop['step_s']:.4f} | "
            f"{drop['step_s'] / lora['step_s']:.3f} | {lora['memory'] / 2**20:.1f} | "
            f"{drop['memory'] / 2**20:.1f} | {drop['memory'] / lora['memory']:.4f} |",
            flush=True,
        )
        del runs, lora, drop  # free the device before the next size
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
