"""DropLoRA vs plain LoRA: training step time and memory, measured in one process.

    .venv/bin/python bench/bench_rank_dropout.py [--reps 15] [--mask-mode element]

For each model size, two copies of one PEFT LoRA model (one with rank dropout) take turns
(interleaved, so drift in machine load hits both alike) doing full AdamW training steps.
Prints the median step time of each and the ratio. Memory: the peak bytes of the tensors
alive during a step (activations, tensors saved for backward, gradients, temporaries, counted
at the allocator level by a dispatch-mode tracker) plus the weights and optimizer state, and
the ratio of those peaks. Targets from the core issue: both ratios ≤ 1.02.
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
        hidden=64, intermediate=128, layers=2, heads=4, seq=128, batch=8, rank=16),
    "wide (hidden 1024, 4 layers, seq 256, batch 4)": dict(
        hidden=1024, intermediate=2816, layers=4, heads=16, seq=256, batch=4, rank=32),
}


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


def build(size: dict, seed: int = 0):
    torch.manual_seed(seed)
    base = LlamaForCausalLM(LlamaConfig(
        vocab_size=1024, hidden_size=size["hidden"], intermediate_size=size["intermediate"],
        num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
        num_key_value_heads=size["heads"], max_position_embeddings=size["seq"]))
    return get_peft_model(base, LoraConfig(
        r=size["rank"], lora_alpha=2 * size["rank"], lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]))


def training_step(model, optimizer, tokens):
    model(input_ids=tokens, labels=tokens).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def static_bytes(model, optimizer) -> int:
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    state = sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)
    )
    return weights + state


def compare(size: dict, reps: int, p: float, mask_mode: str) -> dict:
    lora = build(size).train()
    droplora = copy.deepcopy(lora)
    install_rank_dropout(droplora, p=p, mask_mode=mask_mode)
    runs = {}
    for name, model in (("lora", lora), ("droplora", droplora)):
        optimizer = torch.optim.AdamW([w for w in model.parameters() if w.requires_grad], lr=1e-4)
        runs[name] = {"model": model, "optimizer": optimizer, "times": []}
    tokens = torch.randint(0, 1024, (size["batch"], size["seq"]), generator=torch.Generator().manual_seed(0))
    for run in runs.values():  # warm-up, and the optimizer state exists before measuring memory
        training_step(run["model"], run["optimizer"], tokens)
    for _ in range(reps):
        for run in runs.values():
            start = time.perf_counter()
            training_step(run["model"], run["optimizer"], tokens)
            run["times"].append(time.perf_counter() - start)
    for run in runs.values():
        with PeakTensorMemory() as tracker:
            training_step(run["model"], run["optimizer"], tokens)
        run["memory"] = static_bytes(run["model"], run["optimizer"]) + tracker.peak
        run["step_s"] = statistics.median(run["times"])
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--p", type=float, default=0.3)
    parser.add_argument("--mask-mode", default="element")
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES), metavar="SIZE")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, p={args.p}, "
          f"mask_mode={args.mask_mode}, {args.reps} interleaved steps each")
    print("| model | LoRA step (s) | DropLoRA step (s) | time ratio | LoRA peak (MiB) | DropLoRA peak (MiB) | memory ratio |")
    print("|---|---|---|---|---|---|---|")
    for label in args.sizes:
        runs = compare(SIZES[label], args.reps, args.p, args.mask_mode)
        lora, drop = runs["lora"], runs["droplora"]
        print(f"| {label} | {lora['step_s']:.4f} | {drop['step_s']:.4f} | "
              f"{drop['step_s'] / lora['step_s']:.3f} | {lora['memory'] / 2**20:.1f} | "
              f"{drop['memory'] / 2**20:.1f} | {drop['memory'] / lora['memory']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
