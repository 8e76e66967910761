"""The paper recipes' table: task × base model × method, with the DropLoRA paper's settings.

From the DropLoRA paper (arXiv 2508.17337, §4 and Appendix A Table 7) and the authors' training
scripts (4 GPUs, ZeRO-2, lr 3e-4, linear schedule, 100 warmup steps, batch 128, bf16, flash
attention, gradient checkpointing). examples/recipes.py renders it to examples/yml/, and
`axolotl droplora explain` matches a recipe against its cells; it lives in the package so that
`explain` finds it in a wheel install too.
"""

from __future__ import annotations

from ..eval.prompts import ALPACA

# the DropLoRA paper's targets (its training scripts), for every recipe, the demo and the studies
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]

TASKS = {
    "commonsense": {
        "rank": 32,
        "epochs": 3,
        "sequence_len": 256,
        "data": "Commonsense170K (LLM-Adapters ft-training_set/commonsense_170k.json: instruction/input/output/answer)",
        "datasets": [{"path": "data/commonsense_170k.json", "ds_type": "json", "type": "alpaca"}],
        "metric": "avg. accuracy, 8 sets",
    },
    "math": {
        "rank": 64,
        "epochs": 1,
        "sequence_len": 1024,
        "data": "MetaMathQA 395K (meta-math/MetaMathQA: query/response)",
        "datasets": [
            {
                "path": "meta-math/MetaMathQA",
                "split": "train",
                "type": {
                    "field_instruction": "query",
                    "field_output": "response",
                    "format": ALPACA,
                    "no_input_format": ALPACA,
                },
            }
        ],
        "metric": "GSM8K / MATH",
    },
    "code": {
        "rank": 32,
        "epochs": 3,
        "sequence_len": 1024,
        "data": "CodeFeedback (m-a-p/CodeFeedback-Filtered-Instruction: query/answer)",
        "datasets": [
            {
                "path": "m-a-p/CodeFeedback-Filtered-Instruction",
                "split": "train",
                "type": {
                    "field_instruction": "query",
                    "field_output": "answer",
                    "format": ALPACA,
                    "no_input_format": ALPACA,
                },
            }
        ],
        "metric": "HumanEval / MBPP",
    },
    "conversation": {
        "rank": 32,
        "epochs": 3,
        "sequence_len": 1024,
        "data": "instruction following, pissa-dataset layout (the authors' datasets/conversations/"
        "train.json: `instruction` already holds the Alpaca prompt, `output` the answer)",
        "datasets": [
            {
                "path": "data/conversation_train.json",
                "ds_type": "json",
                "type": {
                    "field_instruction": "instruction",
                    "field_output": "output",
                    "format": "{instruction}\n",
                    "no_input_format": "{instruction}\n",
                },
            }
        ],
        "metric": "MT-Bench (GPT-4 judge)",
    },
}

MODELS = {"llama2_7b": "meta-llama/Llama-2-7b-hf", "llama3_8b": "meta-llama/Meta-Llama-3-8B"}

# α = 2r for LoRA, DoRA and DropLoRA; α = r for PiSSA and MiLoRA (Table 7)
METHODS = {
    "lora": {"alpha_per_rank": 2, "keys": {"adapter": "lora"}},
    "droplora": {
        "alpha_per_rank": 2,
        "keys": {"adapter": "droplora", "droplora_rank_dropout": 0.3, "droplora_mask_mode": "element"},
    },
    "dora": {"alpha_per_rank": 2, "keys": {"adapter": "lora", "peft_use_dora": True}},
    "pissa": {"alpha_per_rank": 1, "keys": {"adapter": "lora", "peft_init_lora_weights": "pissa_niter_16"}},
    "milora": {"alpha_per_rank": 1, "keys": {"adapter": "lora", "peft_init_lora_weights": "milora"}},
}

# The paper's numbers for each cell (Tables 1-4, the authors' own runs). The copy of Table 1 we
# have is garbled for LLaMA2-7B, so those cells point at the paper instead of guessing.
PAPER = {
    ("commonsense", "llama3_8b"): {
        "lora": "86.78",
        "dora": "86.67",
        "pissa": "83.74",
        "milora": "84.49",
        "droplora": "87.61",
    },
    ("math", "llama2_7b"): {
        "lora": "65.66 / 16.02",
        "dora": "66.19 / 16.14",
        "pissa": "64.37 / 15.96",
        "milora": "64.52 / 14.92",
        "droplora": "66.72 / 16.38",
    },
    ("math", "llama3_8b"): {
        "lora": "80.44 / 30.46",
        "dora": "80.44 / 30.21",
        "pissa": "79.53 / 28.92",
        "milora": "80.74 / 30.62",
        "droplora": "81.32 / 30.74",
    },
    ("code", "llama2_7b"): {
        "lora": "18.90 / 41.27",
        "dora": "14.63 / 42.86",
        "pissa": "9.76 / 42.86",
        "milora": "21.34 / 37.57",
        "droplora": "21.34 / 43.39",
    },
    ("code", "llama3_8b"): {
        "lora": "62.81 / 65.87",
        "dora": "59.76 / 66.40",
        "pissa": "57.93 / 65.87",
        "milora": "59.76 / 66.93",
        "droplora": "60.37 / 70.37",
    },
    ("conversation", "llama2_7b"): {
        "lora": "5.16",
        "dora": "5.33",
        "pissa": "5.20",
        "milora": "5.25",
        "droplora": "5.54",
    },
    ("conversation", "llama3_8b"): {
        "lora": "6.31",
        "dora": "6.09",
        "pissa": "5.94",
        "milora": "6.11",
        "droplora": "6.42",
    },
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
        "lora_target_modules": list(TARGET_MODULES),
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
