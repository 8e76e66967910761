"""How far an SVD-initialised model starts from its base, in bfloat16 and float32.

    axolotl droplora smollm2 --out demo/SmolLM2-135M-Instruct
    .venv/bin/python bench/bench_bf16_svd_init.py --model demo/SmolLM2-135M-Instruct [--steps 4]

For each dtype the base is loaded in (bfloat16, float32), each target set (the issue's q,v,up,down
and the recipes' q,k,v,up,down) and each init (MiLoRA as the papers round it, MiLoRA with
`svd_init_exact`, PEFT's PiSSA), the LoRA model (r = 16, lora_alpha = 16: s = 1, as the recipes
use for SVD inits) is built the TRL route's way: `get_peft_model` as SFTTrainer calls it, then
`DropLoRACallback.prepare` (what its on_init_end runs: `init_milora`, the snapshot for saves).
Printed per row, against the base loaded in the same dtype: max and mean |logit difference| and
argmax agreement on 2 × 32 random tokens (seed 0), and the held-out answer loss (nats/token,
`answer_loss.answer_nll`) of base and built on the demo's 40 held-out questions (`make-demo`'s
split, prompted as the demo recipe prompts them). The first row is the yardstick: the bf16 base
against the float32 base, i.e. what bf16 itself changes.

`--steps N` also times N training steps (after one warm-up) of MiLoRA rounded vs exact on the
bf16 model (batch 4 × 64 tokens, AdamW), in the order rounded, exact, exact, rounded (so that a
drift in machine load falls on both), and prints each mode's median step and their ratio; on a
shared CPU the ratio is indicative only. `--steps-only` skips the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from axolotl_droplora import DropLoRACallback
from axolotl_droplora.demo.task import make_demo
from axolotl_droplora.eval.answer_loss import answer_nll
from axolotl_droplora.eval.prompts import MATH_PROMPT

TARGETS = {
    "q,v,up,down": ["q_proj", "v_proj", "up_proj", "down_proj"],
    "q,k,v,up,down": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
}
INITS = {
    "MiLoRA (rounded W_p)": dict(milora=True),
    "MiLoRA svd_init_exact": dict(milora=True, exact_init=True),
    "PiSSA (PEFT)": dict(pissa=True),
}
RANK = 16


def heldout(model_dir: Path) -> tuple[list[str], list[str]]:
    """The demo's held-out questions, prompted as the demo recipe's dataset format does."""
    with tempfile.TemporaryDirectory() as scratch:
        make_demo(scratch, base_model=model_dir)
        records = json.loads((Path(scratch) / "heldout" / "gsm8k" / "test.json").read_text())
    prompt = MATH_PROMPT + "\n"
    return [prompt.format(instruction=r["instruction"]) for r in records], [r["output"] for r in records]


def build(model_dir: Path, dtype: torch.dtype, targets: list[str], pissa=False, **callback_kwargs):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model = get_peft_model(
        model,
        LoraConfig(
            r=RANK,
            lora_alpha=RANK,
            lora_dropout=0.0,
            target_modules=targets,
            init_lora_weights="pissa" if pissa else True,
        ),
    )
    callback = DropLoRACallback(rank_dropout=None, **callback_kwargs)
    callback.prepare(model)
    return model.eval()


@torch.no_grad()
def compare(model, base_logits: torch.Tensor, tokens: torch.Tensor) -> tuple[float, float, float]:
    logits = model(input_ids=tokens).logits.float()
    diff = (logits - base_logits).abs()
    agree = (logits.argmax(-1) == base_logits.argmax(-1)).float().mean()
    return float(diff.max()), float(diff.mean()), float(agree)


def step_time(model, steps: int, vocab: int) -> list[float]:
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    for step in range(steps + 1):
        tokens = torch.randint(0, vocab, (4, 64), generator=generator)
        start = time.perf_counter()
        model(input_ids=tokens, labels=tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step:  # the first step allocates the optimizer state
            times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="SmolLM2-135M-Instruct (axolotl droplora smollm2)")
    parser.add_argument("--steps", type=int, default=0, help="also time this many training steps (0: no)")
    parser.add_argument("--steps-only", action="store_true", help="only the step times (needs --steps)")
    args = parser.parse_args()
    if args.steps_only and not args.steps:
        parser.error("--steps-only needs --steps N (N > 0)")
    if not args.steps_only:
        table(args.model)
    if args.steps:
        time_steps(args.model, args.steps)


def table(model_dir: Path) -> None:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts, answers = heldout(model_dir)
    vocab = AutoModelForCausalLM.from_pretrained(model_dir).config.vocab_size
    tokens = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(0))
    print(
        f"{model_dir.name}, LoRA r={RANK} alpha={RANK}, logits on 2x32 random tokens (seed 0), answer loss "
        f"on {len(prompts)} held-out questions; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    header = (
        "| dtype | targets | init | max abs logit diff | mean abs logit diff | argmax agreement | "
        "answer loss base | answer loss built |"
    )
    print(header + "\n" + "|---" * 8 + "|")
    bases = {}
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
            bases[dtype] = (
                base(input_ids=tokens).logits.float(),
                statistics.fmean(answer_nll(base, tokenizer, prompts, answers, batch_size=8)),
            )
            del base
    bf16_logits, f32_logits = bases[torch.bfloat16][0], bases[torch.float32][0]
    diff = (bf16_logits - f32_logits).abs()
    agree = float((bf16_logits.argmax(-1) == f32_logits.argmax(-1)).float().mean())
    # the yardstick row: "base" is the f32 base, "built" the bf16 base
    print(
        f"| bf16 base vs f32 base | - | - | {float(diff.max()):.3g} | {float(diff.mean()):.3g} | {agree:.1%} | "
        f"{bases[torch.float32][1]:.4f} | {bases[torch.bfloat16][1]:.4f} |"
    )
    for dtype in (torch.bfloat16, torch.float32):
        base_logits, base_loss = bases[dtype]
        for target_name, targets in TARGETS.items():
            for init_name, kwargs in INITS.items():
                model = build(model_dir, dtype, targets, **kwargs)
                worst, mean, agree = compare(model, base_logits, tokens)
                loss = statistics.fmean(answer_nll(model, tokenizer, prompts, answers, batch_size=8))
                print(
                    f"| {str(dtype).removeprefix('torch.')} | {target_name} | {init_name} | {worst:.3g} | "
                    f"{mean:.3g} | {agree:.1%} | {base_loss:.4f} | {loss:.4f} |",
                    flush=True,
                )
                del model


def time_steps(model_dir: Path, steps: int) -> None:
    vocab = AutoModelForCausalLM.from_pretrained(model_dir).config.vocab_size
    seconds = {"MiLoRA (rounded W_p)": [], "MiLoRA svd_init_exact": []}
    for name in ("MiLoRA (rounded W_p)", "MiLoRA svd_init_exact", "MiLoRA svd_init_exact", "MiLoRA (rounded W_p)"):
        torch.manual_seed(0)
        model = build(model_dir, torch.bfloat16, TARGETS["q,k,v,up,down"], **INITS[name])
        seconds[name] += step_time(model, steps, vocab)
        del model
    for name, times in seconds.items():
        print(f"{name}: median step {statistics.median(times):.3f} s over 2 x {steps} steps (bf16, batch 4x64)")
    ratio = statistics.median(seconds["MiLoRA svd_init_exact"]) / statistics.median(seconds["MiLoRA (rounded W_p)"])
    print(f"step time ratio exact / rounded: {ratio:.3f}")


if __name__ == "__main__":
    main()
