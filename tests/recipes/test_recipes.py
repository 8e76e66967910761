"""The paper recipes (examples/recipes.py, examples/yml/, examples/deepspeed/)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("recipes", ROOT / "examples" / "recipes.py")
recipes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipes)
RECIPES = sorted((ROOT / "examples" / "yml").glob("*.yml"))


def test_committed_recipes_are_exactly_what_the_table_renders():
    rendered = recipes.rendered()
    on_disk = set((ROOT / "examples" / "yml").iterdir())
    assert on_disk == set(rendered), "files in examples/yml/ that the table does not make, or missing ones"
    for path, text in rendered.items():
        assert path.read_text() == text, f"{path.name} disagrees with examples/recipes.py's table"
    assert len(RECIPES) == len(recipes.TASKS) * len(recipes.MODELS) * len(recipes.METHODS) == 40


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_passes_axolotls_config_validation_with_the_plugin(path, tmp_path, monkeypatch):
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    monkeypatch.chdir(tmp_path)  # validation writes debug.log into the recipe's relative output_dir

    raw = yaml.safe_load(path.read_text())
    task, model, method = path.stem.split("-")
    prepare_plugins(DictDefault(raw))
    cfg = validate_config(DictDefault(raw))
    rank = recipes.TASKS[task]["rank"]
    assert (cfg.lora_r, cfg.lora_alpha) == (rank, rank * recipes.METHODS[method]["alpha_per_rank"])
    assert cfg.micro_batch_size * cfg.gradient_accumulation_steps * recipes.GPUS == 128
    assert (ROOT / cfg.deepspeed).is_file() and cfg.base_model == recipes.MODELS[model]
    assert path.read_text().startswith(f"# {method} on {recipes.MODELS[model]}, {task} task")


@pytest.mark.parametrize(
    "name, stage, offload",
    [
        ("zero2", 2, False),
        ("zero2_offload", 2, True),
        ("zero3", 3, False),
        ("zero3_offload", 3, True),
    ],
)
def test_deepspeed_files_are_valid_deepspeed_configs(name, stage, offload):
    from types import SimpleNamespace

    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    hf_config = HfTrainerDeepSpeedConfig(str(ROOT / "examples" / "deepspeed" / f"{name}.json"))
    try:
        # fill the "auto" values the way the Trainer does for a real run (ZeRO-3's bucket sizes
        # from the model's hidden size: Llama-3-8B's 4096)
        args = TrainingArguments(
            output_dir="unused",
            per_device_train_batch_size=16,
            gradient_accumulation_steps=2,
            use_cpu=True,
            report_to=[],
        )
        hf_config.trainer_config_process(args)
        hf_config.trainer_config_finalize(args, SimpleNamespace(config=SimpleNamespace(hidden_size=4096)), 100)
        assert "auto" not in json.dumps(hf_config.config)
        parsed = DeepSpeedConfig(hf_config.config)
    finally:
        # the config registers itself as transformers' global DeepSpeed config: a ZeRO-3 one left
        # behind would make every later from_pretrained in this process partition its weights
        unset_hf_deepspeed_config()
    assert parsed.zero_optimization_stage == stage
    assert (parsed.zero_config.offload_optimizer is not None) == offload
    assert (parsed.train_micro_batch_size_per_gpu, parsed.gradient_accumulation_steps) == (16, 2)
    if stage == 3:
        assert (parsed.zero_config.offload_param is not None) == offload
        # the final save gathers the whole adapter, not each rank's partition
        assert parsed.zero_config.gather_16bit_weights_on_model_save


FSDP2_RECIPES = sorted((ROOT / "examples" / "fsdp2").glob("*.yml"))
# what an FSDP2 recipe changes in the paper recipe it starts from: the engine, and DropLoRA on top
FSDP2_CHANGES = {"adapter", "droplora_rank_dropout", "deepspeed", "fsdp_version", "fsdp_config", "output_dir"}


@pytest.mark.parametrize("path", FSDP2_RECIPES, ids=lambda p: p.stem)
def test_fsdp2_recipe_passes_axolotls_config_validation_and_is_the_paper_recipe_sharded(path, tmp_path, monkeypatch):
    from axolotl.utils.config import prepare_plugins, validate_config
    from axolotl.utils.dict import DictDefault

    monkeypatch.chdir(tmp_path)  # validation writes debug.log into the recipe's relative output_dir
    raw = yaml.safe_load(path.read_text())
    prepare_plugins(DictDefault(raw))
    cfg = validate_config(DictDefault(raw))
    assert cfg.fsdp_version == 2 and not cfg.deepspeed
    fsdp = cfg.fsdp_config
    assert fsdp.auto_wrap_policy == "TRANSFORMER_BASED_WRAP"
    assert fsdp.transformer_layer_cls_to_wrap == "LlamaDecoderLayer"
    assert fsdp.reshard_after_forward is True and fsdp.cpu_ram_efficient_loading is False
    assert fsdp.state_dict_type == "FULL_STATE_DICT"  # checkpoints hold an adapter file to convert
    assert (cfg.adapter, cfg.peft_init_lora_weights, cfg.droplora_rank_dropout) == ("droplora", "milora", 0.3)
    assert cfg.micro_batch_size * cfg.gradient_accumulation_steps * recipes.GPUS == 128

    task, model, _ = path.stem.split("-", 2)
    paper = yaml.safe_load((ROOT / "examples" / "yml" / f"{task}-{model}-milora.yml").read_text())
    assert {key: value for key, value in raw.items() if key not in FSDP2_CHANGES} == {
        key: value for key, value in paper.items() if key not in FSDP2_CHANGES
    }

    # the comment's reason for cpu_ram_efficient_loading: false is what the plugin enforces
    raw["fsdp_config"]["cpu_ram_efficient_loading"] = True
    with pytest.raises(ValueError, match="cpu_ram_efficient_loading: true`: off rank 0 the base weights are empty"):
        validate_config(DictDefault(raw))


def test_there_is_an_fsdp2_recipe():
    assert [path.name for path in FSDP2_RECIPES] == ["math-llama3_8b-milora-droplora.yml"]


# one recipe per data format, swapped onto the tiny model and a few local rows in that format
FORMATS = {
    "commonsense-llama2_7b-droplora": (
        {
            "instruction": "Please choose the correct answer. Question: is water wet? Answer format: true/false",
            "input": "",
            "output": "the correct answer is true",
            "answer": "true",
        },
        "{instruction}",
        "output",
    ),
    "math-llama3_8b-milora": (
        {"query": "What is 12 plus 30?", "response": "12 + 30 = 42. The answer is: 42"},
        "{query}",
        "response",
    ),
    "code-llama2_7b-dora": (
        {"query": "Write a function that adds two numbers.", "answer": "def add(a, b):\n    return a + b"},
        "{query}",
        "answer",
    ),
    "conversation-llama3_8b-pissa": (
        {
            "instruction": recipes.ALPACA.format(instruction="Say hello.").rstrip("\n"),
            "input": "",
            "output": "Hello! How can I help you today?",
        },
        None,
        "output",
    ),
}


@pytest.mark.parametrize("stem", list(FORMATS))
def test_each_data_format_trains_and_only_the_response_carries_labels(stem, tmp_path, demo_dir):
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    row, instruction, output_field = FORMATS[stem]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for _ in range(8)))
    config = yaml.safe_load((ROOT / "examples" / "yml" / f"{stem}.yml").read_text())
    dataset = dict(config["datasets"][0], path=str(data), ds_type="json")
    dataset.pop("split", None)
    config.update(
        base_model=str(demo_dir / "model"),
        datasets=[dataset],
        deepspeed=None,
        bf16=False,
        attn_implementation="eager",
        gradient_checkpointing=False,
        micro_batch_size=2,
        gradient_accumulation_steps=1,
        max_steps=2,
        warmup_steps=0,
        sequence_len=256,
        save_strategy="no",
        output_dir=str(tmp_path / "out"),
        dataset_prepared_path=str(tmp_path / "prepared"),
        peft_init_lora_weights=config.get("peft_init_lora_weights", "").replace("_niter_16", "") or None,
        lora_r=16,
        lora_alpha=16 * recipes.METHODS[stem.split("-")[2]]["alpha_per_rank"],  # tiny widths
    )
    config = {key: value for key, value in config.items() if value is not None}
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(yaml.safe_dump(config))
    trained = run_cli([sys.executable, "-m", "axolotl.cli.train", str(recipe)], cwd=tmp_path)
    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-4000:]
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["peft_type"] == "LORA"

    prepared = load_from_disk(str(next((tmp_path / "prepared").glob("*/dataset_info.json")).parent))
    tokenizer = AutoTokenizer.from_pretrained(demo_dir / "model")
    ids, labels = prepared[0]["input_ids"], prepared[0]["labels"]
    prompt = tokenizer.decode([t for t, label in zip(ids, labels) if label == -100], skip_special_tokens=True)
    answer = tokenizer.decode([t for t, label in zip(ids, labels) if label != -100], skip_special_tokens=True)
    expected_prompt = (
        recipes.ALPACA.format(instruction=instruction.format(**row)) if instruction else row["instruction"] + "\n"
    )
    assert prompt.strip() == expected_prompt.strip()
    assert prompt.rstrip().endswith("### Response:")
    assert answer.strip() == row[output_field].strip()
