"""The paper recipes: one table of settings, rendered to examples/yml/*.yml and its README.

    .venv/bin/python examples/recipes.py          # rewrite examples/yml/ from the table
    .venv/bin/python examples/recipes.py --check  # exit 1 if a committed file differs

Every recipe is task × base model × method, from the DropLoRA paper (arXiv 2508.17337, §4 and
Appendix A Table 7) and the authors' training scripts (4 GPUs, ZeRO-2, lr 3e-4, linear schedule,
100 warmup steps, batch 128, bf16, flash attention, gradient checkpointing).
tests/test_recipes.py fails if a committed recipe disagrees with this table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parent / "yml"
ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)

TASKS = {
    "commonsense": {
        "rank": 32, "epochs": 3, "sequence_len": 256,
        "data": "Commonsense170K (LLM-Adapters ft-training_set/commonsense_170k.json: instruction/input/output/answer)",
        "datasets": [{"path": "data/commonsense_170k.json", "ds_type": "json", "type": "alpaca"}],
        "metric": "avg. accuracy, 8 sets",
    },
    "math": {
        "rank": 64, "epochs": 1, "sequence_len": 1024,
        "data": "MetaMathQA 395K (meta-math/MetaMathQA: query/response)",
        "datasets": [{"path": "meta-math/MetaMathQA", "split": "train", "type": {
            "field_instruction": "query", "field_output": "response",
            "format": ALPACA, "no_input_format": ALPACA}}],
        "metric": "GSM8K / MATH",
    },
    "code": {
        "rank": 32, "epochs": 3, "sequence_len": 1024,
        "data": "CodeFeedback (m-a-p/CodeFeedback-Filtered-Instruction: query/answer)",
        "datasets": [{"path": "m-a-p/CodeFeedback-Filtered-Instruction", "split": "train", "type": {
            "field_instruction": "query", "field_output": "answer",
            "format": ALPACA, "no_input_format": ALPACA}}],
        "metric": "HumanEval / MBPP",
    },
    "conversation": {
        "rank": 32, "epochs": 3, "sequence_len": 1024,
        "data": "instruction following, pissa-dataset layout (the authors' datasets/conversations/"
                "train.json: `instruction` already holds the Alpaca prompt, `output` the answer)",
        "datasets": [{"path": "data/conversation_train.json", "ds_type": "json", "type": {
            "field_instruction": "instruction", "field_output": "output",
            "format": "{instruction}\n", "no_input_format": "{instruction}\n"}}],
        "metric": "MT-Bench (GPT-4 judge)",
    },
}

MODELS = {"llama2_7b": "meta-llama/Llama-2-7b-hf", "llama3_8b": "meta-llama/Meta-Llama-3-8B"}

# α = 2r for LoRA, DoRA and DropLoRA; α = r for PiSSA and MiLoRA (Table 7)
METHODS = {
    "lora": {"alpha_per_rank": 2, "keys": {"adapter": "lora"}},
    "droplora": {"alpha_per_rank": 2, "keys": {
        "adapter": "droplora", "droplora_rank_dropout": 0.3, "droplora_mask_mode": "element"}},
    "dora": {"alpha_per_rank": 2, "keys": {"adapter": "lora", "peft_use_dora": True}},
    "pissa": {"alpha_per_rank": 1, "keys": {"adapter": "lora", "peft_init_lora_weights": "pissa_niter_16"}},
    "milora": {"alpha_per_rank": 1, "keys": {"adapter": "lora", "peft_init_lora_weights": "milora"}},
}

# The paper's numbers for each cell (Tables 1-4, the authors' own runs). The copy of Table 1 we
# have is garbled for LLaMA2-7B, so those cells point at the paper instead of guessing.
PAPER = {
    ("commonsense", "llama3_8b"): {"lora": "86.78", "dora": "86.67", "pissa": "83.74",
                                   "milora": "84.49", "droplora": "87.61"},
    ("math", "llama2_7b"): {"lora": "65.66 / 16.02", "dora": "66.19 / 16.14", "pissa": "64.37 / 15.96",
                            "milora": "64.52 / 14.92", "droplora": "66.72 / 16.38"},
    ("math", "llama3_8b"): {"lora": "80.44 / 30.46", "dora": "80.44 / 30.21", "pissa": "79.53 / 28.92",
                            "milora": "80.74 / 30.62", "droplora": "81.32 / 30.74"},
    ("code", "llama2_7b"): {"lora": "18.90 / 41.27", "dora": "14.63 / 42.86", "pissa": "9.76 / 42.86",
                            "milora": "21.34 / 37.57", "droplora": "21.34 / 43.39"},
    ("code", "llama3_8b"): {"lora": "62.81 / 65.87", "dora": "59.76 / 66.40", "pissa": "57.93 / 65.87",
                            "milora": "59.76 / 66.93", "droplora": "60.37 / 70.37"},
    ("conversation", "llama2_7b"): {"lora": "5.16", "dora": "5.33", "pissa": "5.20", "milora": "5.25",
                                    "droplora": "5.54"},
    ("conversation", "llama3_8b"): {"lora": "6.31", "dora": "6.09", "pissa": "5.94", "milora": "6.11",
                                    "droplora": "6.42"},
}

GPUS, MICRO_BATCH = 4, 16  # the paper's 4 × A100 with ZeRO-2; global batch 128
BATCH_ARITHMETIC = {1: (16, 8), 4: (16, 2), 8: (16, 1)}  # GPUs: (micro_batch_size, accumulation)


def recipe(task: str, model: str, method: str) -> dict:
    settings, spec = TASKS[task], METHODS[method]
    rank = settings["rank"]
    return {
        "base_model": MODELS[model],
        "plugins": ["axolotl_droplora.DropLoRAPlugin"],
        **spec["keys"],
        "lora_r": rank,
        "lora_alpha": rank * spec["alpha_per_rank"],
        "lora_dropout": 0.05,
        "lora_target_modules": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
        "datasets": settings["datasets"],
        "dataset_prepared_path": f"prepared/{task}-{model}",
        "val_set_size": 0,
        "train_on_inputs": False,
        "sequence_len": settings["sequence_len"],
        "micro_batch_size": MICRO_BATCH,
        "gradient_accumulation_steps": BATCH_ARITHMETIC[GPUS][1],
        "num_epochs": settings["epochs"],
        "optimizer": "adamw_torch",
        "learning_rate": 3e-4,
        "lr_scheduler": "linear",
        "warmup_steps": 100,
        "bf16": True,
        "attn_implementation": "flash_attention_2",
        "gradient_checkpointing": True,
        "deepspeed": "examples/deepspeed/zero2.json",
        "save_strategy": "epoch",
        "logging_steps": 10,
        "seed": 42,
        "output_dir": f"outputs/{task}-{model}-{method}",
    }


def header(task: str, model: str, method: str) -> str:
    settings = TASKS[task]
    arithmetic = "; ".join(f"{g} GPU{'s' if g > 1 else ''}: {m} × {a} × {g}" for g, (m, a) in BATCH_ARITHMETIC.items())
    lines = [
        f"{method} on {MODELS[model]}, {task} task: a DropLoRA paper recipe (arXiv 2508.17337).",
        "Generated by examples/recipes.py from its table: edit the table, not this file.",
        f"Hyperparameters: paper Appendix A Table 7 (r={settings['rank']}, α as listed, {settings['epochs']} "
        "epoch(s), lr 3e-4 linear, 100 warmup steps, AdamW, dropout 0.05, q/k/v/up/down) and the",
        "authors' scripts (4 GPUs, ZeRO-2 without offload, bf16, flash attention, gradient checkpointing).",
        f"Data: {settings['data']}. Edit the dataset and output paths only.",
        f"Global batch 128 = micro_batch_size × gradient_accumulation_steps × GPUs ({arithmetic}).",
        "Set for 4 GPUs; on 1 or 8 GPUs change gradient_accumulation_steps. Small GPUs: deepspeed: "
        "examples/deepspeed/zero2_offload.json.",
        f"sequence_len {settings['sequence_len']} is our choice: the paper does not state one.",
    ]
    if method == "droplora":
        lines.append("droplora_rank_dropout 0.3: the paper's study finds it best; the authors' main runs used 0.5.")
    return "".join(f"# {line}\n" for line in lines)


class _RecipeDumper(yaml.SafeDumper):
    """Multi-line strings (the prompt templates) as literal blocks, so they read as written."""


_RecipeDumper.add_representer(
    str, lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


def rendered() -> dict[Path, str]:
    files = {}
    for task in TASKS:
        for model in MODELS:
            for method in METHODS:
                body = yaml.dump(recipe(task, model, method), Dumper=_RecipeDumper, sort_keys=False,
                                 width=100, allow_unicode=True)
                files[OUT / f"{task}-{model}-{method}.yml"] = header(task, model, method) + body
    files[OUT / "README.md"] = index()
    return files


def index() -> str:
    rows = [
        "# Paper recipes",
        "",
        "Generated by `examples/recipes.py` from one table (tests/test_recipes.py fails on drift).",
        "Each file trains one cell of the DropLoRA paper's Tables 1–4 with Axolotl 0.19 and this plugin.",
        "All use the paper's setup: 4 GPUs (A100 80 GB in the paper) with DeepSpeed ZeRO-2 "
        "(`examples/deepspeed/zero2.json`), global batch 128, lr 3e-4, linear schedule, 100 warmup "
        "steps, AdamW, lora_dropout 0.05, targets q/k/v/up/down, bf16, flash attention.",
        "",
        "Global batch 128 = micro_batch_size × gradient_accumulation_steps × GPUs: "
        + ", ".join(f"{g} GPU{'s' if g > 1 else ''}: {m} × {a} × {g}" for g, (m, a) in BATCH_ARITHMETIC.items())
        + ". The files are set for 4 GPUs; on 1 or 8 GPUs change `gradient_accumulation_steps`.",
        "",
        "**ZeRO-2 or ZeRO-2 with optimizer offload.** The paper ran ZeRO-2 without offload "
        "(`zero2.json`): use it whenever the model, activations and the sharded AdamW state fit on "
        "the GPUs, which is the fast choice. `zero2_offload.json` keeps the optimizer state and its "
        "step in CPU memory: pick it only when GPU memory runs out, since it is slower per step. "
        "With LoRA the optimizer state is small, so offload saves less than for full fine-tuning.",
        "",
        "**DropLoRA's p.** The recipes use `droplora_rank_dropout: 0.3`, the paper's best in its "
        "pruning-rate study (§4.4); the authors' main runs used 0.5, which the same study finds "
        "worse than LoRA on math and code.",
        "",
        "**Data.** Commonsense: LLM-Adapters' `commonsense_170k.json` → `type: alpaca`. Math: "
        "MetaMathQA `query/response`, code: CodeFeedback `query/answer` → Axolotl's custom prompt "
        "format with field mapping and the Alpaca template. Conversation: the pissa-dataset layout "
        "(the authors' files), whose `instruction` already holds the Alpaca prompt. Every prompt "
        "ends in `### Response:` as the papers' evaluation expects, and only the response carries "
        "labels (`train_on_inputs: false`).",
        "",
        "Paper numbers: the authors' own runs (Tables 1–4). The commonsense cells for LLaMA2-7B are "
        "left to the paper: our copy of its Table 1 is garbled there. PiSSA uses "
        "`pissa_niter_16` (PEFT's fast SVD) to keep initialisation short on 7B models.",
        "",
        "| task | model | method | r | α | epochs | paper (metric) | GPUs | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, settings in TASKS.items():
        for model in MODELS:
            for method, spec in METHODS.items():
                paper = PAPER.get((task, model), {}).get(method, "see paper")
                rank = settings["rank"]
                rows.append(
                    f"| {task} | {MODELS[model]} | {method} | {rank} | {rank * spec['alpha_per_rank']} | "
                    f"{settings['epochs']} | {paper} ({settings['metric']}) | 4 × A100 80 GB (paper) | "
                    f"`axolotl train examples/yml/{task}-{model}-{method}.yml` |"
                )
    return "\n".join(rows) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report files that differ")
    args = parser.parse_args()
    stale = [path for path, text in rendered().items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"out of date: {path}")
        sys.exit(1 if stale else 0)
    OUT.mkdir(parents=True, exist_ok=True)
    for path, text in rendered().items():
        path.write_text(text)
    print(f"wrote {len(rendered())} files to {OUT}")


if __name__ == "__main__":
    main()
