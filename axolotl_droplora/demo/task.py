"""The demo task, and the embedded tiny model the tests use: all made locally (no model hub).

`make_demo(dir)` writes an arithmetic task ("What is 12 plus 30?"; train and held-out splits
with unique answers), a ready `droplora.yml` that trains on it through Axolotl, and, unless a
base model is given (the README's main job passes SmolLM2-135M-Instruct), a tiny
Llama-architecture model with its own byte-level BPE tokenizer. The training prompt is the
evaluation prompt of `axolotl droplora eval --task math` (MetaMath's), and the answers end in
"The answer is: N", so the held-out split (`heldout/gsm8k/test.json`) scores before and after
training with the same GSM8K scorer the papers use.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml
from ..eval.prompts import ALPACA_PREAMBLE, MATH_PROMPT
from ..recipes.paper import TARGET_MODULES

TINY_LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)
VOCAB_SIZE = 1024
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
OPERATIONS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}


def arithmetic_problems(n: int, seed: int) -> list[dict]:
    """`n` distinct Alpaca records "What is A <op> B?" -> "A <op> B = C. The answer is C."."""
    rng = random.Random(seed)
    seen, records = set(), []
    while len(records) < n:
        a, b, op = rng.randint(2, 60), rng.randint(2, 60), rng.choice(sorted(OPERATIONS))
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        answer = OPERATIONS[op](a, b)
        symbol = {"plus": "+", "minus": "-", "times": "*"}[op]
        records.append(
            {
                "instruction": f"What is {a} {op} {b}?",
                "input": "",
                "output": f"{a} {symbol} {b} = {answer}. The answer is: {answer}",
                "answer": str(answer),
            }
        )
    return records


def build_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def build_tiny_llama(tokenizer, seed: int = 0, **overrides):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**TINY_LLAMA, **overrides},
    )
    return LlamaForCausalLM(config)


def demo_config(demo_dir: Path, base_model: Path | None = None) -> dict:
    """The Axolotl recipe for the demo: DropLoRA with the paper's layer targets."""
    prompt = MATH_PROMPT + "\n"  # what `eval --task math` asks, so before/after compare like for like
    return {
        "base_model": str(base_model or demo_dir / "model"),
        "plugins": ["axolotl_droplora.DropLoRAPlugin"],
        "adapter": "droplora",
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
        "lora_target_modules": list(TARGET_MODULES),
        "droplora_rank_dropout": 0.3,
        "droplora_mask_mode": "element",
        "datasets": [{"path": str(demo_dir / "data" / "train.jsonl"), "ds_type": "json", "type": {
            "field_instruction": "instruction", "field_output": "output",
            "format": prompt, "no_input_format": prompt}}],
        "dataset_prepared_path": str(demo_dir / "prepared"),
        "val_set_size": 0,
        "sequence_len": 96,
        "micro_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "max_steps": 20,
        "learning_rate": 0.002 if base_model is None else 0.001,
        "lr_scheduler": "linear",
        "warmup_steps": 3,
        "optimizer": "adamw_torch",
        # explicit: left unset, Axolotl 0.19 picks fp16 when bf16 is off, and half-precision
        # matmuls on CPU are an order of magnitude slower than float32
        "bf16": False,
        "fp16": False,
        "train_on_inputs": False,
        "logging_steps": 5,
        "save_strategy": "no",
        "seed": 42,
        "output_dir": str(demo_dir / "out"),
    }


def make_demo(demo_dir: str | Path, base_model: str | Path | None = None,
              n_train: int = 400, n_heldout: int = 40) -> Path:
    """Write data/, heldout/gsm8k/test.json and droplora.yml under `demo_dir` (idempotent), and
    the tiny model in model/ when no `base_model` is given. Returns the recipe's path."""
    demo_dir = Path(demo_dir).resolve()
    problems = arithmetic_problems(n_train + n_heldout, seed=1234)
    splits = {"train": problems[:n_train], "heldout": problems[n_train:]}
    (demo_dir / "data").mkdir(parents=True, exist_ok=True)
    for split, records in splits.items():
        with open(demo_dir / "data" / f"{split}.jsonl", "w") as out:
            out.writelines(json.dumps(record) + "\n" for record in records)
    (demo_dir / "heldout" / "gsm8k").mkdir(parents=True, exist_ok=True)
    (demo_dir / "heldout" / "gsm8k" / "test.json").write_text(json.dumps(splits["heldout"], indent=1))

    model_dir = demo_dir / "model"
    if base_model is None and not (model_dir / "config.json").is_file():
        tokenizer = build_tokenizer(
            [f"{r['instruction']} {r['output']}" for r in problems]
            # the prompt Axolotl puts around each question, so it tokenizes to a few merged tokens
            + [ALPACA_PREAMBLE + " Let's think step by step."] * 50
        )
        model = build_tiny_llama(tokenizer)
        # write into a scratch folder and rename, so an interrupted build is never mistaken
        # for a finished model by the check above
        scratch = demo_dir / "model.partial"
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        scratch.rename(model_dir)

    with open(demo_dir / "droplora.yml", "w") as out:
        out.write("# DropLoRA on the demo arithmetic task; made by `axolotl droplora make-demo`\n")
        yaml.safe_dump(demo_config(demo_dir, Path(base_model).resolve() if base_model else None), out,
                       sort_keys=False)
    return demo_dir / "droplora.yml"
