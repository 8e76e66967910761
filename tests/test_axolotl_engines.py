"""Axolotl's own CLI with 2 processes under DeepSpeed ZeRO-2, ZeRO-3 and FSDP2: DropLoRA and MiLoRA.

Each cell is one `torch.distributed.run` of tests/axolotl_cpu_launch.py: Axolotl's real
`axolotl.cli.train` entry point on the demo recipe, with the few CPU-only patches that file
documents (none of them is needed on GPUs, and the package patches nothing). The engine keys
are the ones users get: the paper recipes' examples/deepspeed/zero2.json with their
gradient-accumulation shape (micro-batch scaled down to 2 for 2 cores),
examples/deepspeed/zero3.json, and the fsdp_version / fsdp_config of the shipped FSDP2 recipe
examples/fsdp2/math-llama3_8b-milora-droplora.yml. tests/test_engines.py covers the same engines
through TRL's SFTTrainer and the callback. CI runs the cells in CI_CELLS;
`ENGINE_MATRIX=all bash scripts/test.sh tests/test_axolotl_engines.py` runs all nine (PiSSA too).
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_cli
from test_engines import single_process_init
from test_plugin import LAYERS_LOG, write_recipe
from test_trainer_callback import vanilla_peft_logits
from transformers import AutoModelForCausalLM, AutoTokenizer

from axolotl_droplora.method.conversion import initial_adapter_of

# the launcher's patches are read from Axolotl 0.21.0's lines; on the 0.19 stack (Python 3.11)
# the CLI stops elsewhere (README, "Through Axolotl"), so the cells are reported as skipped there
AXOLOTL = importlib.metadata.version("axolotl")
pytestmark = pytest.mark.skipif(
    AXOLOTL != "0.21.0", reason=f"tests/axolotl_cpu_launch.py patches Axolotl 0.21.0, this is {AXOLOTL}"
)
ROOT = Path(__file__).resolve().parents[1]
LAUNCH = Path(__file__).with_name("axolotl_cpu_launch.py")
PAPER_RECIPE = yaml.safe_load((ROOT / "examples" / "yml" / "math-llama3_8b-droplora.yml").read_text())
FSDP2_RECIPE = yaml.safe_load((ROOT / "examples" / "fsdp2" / "math-llama3_8b-milora-droplora.yml").read_text())
ENGINES = ["zero2", "zero3", "fsdp2"]
METHODS = ["droplora", "milora", "pissa"]
# ZeRO-3 + MiLoRA: the init gathers weights that Axolotl loaded partitioned (zero.Init), and the
# final save is converted as a file; ZeRO-3 + PiSSA: PEFT's init gathers only because the plugin
# keeps a DeepSpeed config alive; FSDP2 + MiLoRA: Axolotl's own FSDP2 final save (it writes the
# gathered adapter itself) is converted, from the shipped recipe's FSDP keys
CI_CELLS = [("zero3", "milora"), ("zero3", "pissa"), ("fsdp2", "milora")]
CELLS = list(itertools.product(ENGINES, METHODS)) if os.environ.get("ENGINE_MATRIX") == "all" else CI_CELLS
STEPS = 2
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]  # the demo recipe's


def engine_keys(engine: str) -> dict:
    if engine in ("zero2", "zero3"):
        return {"deepspeed": str(ROOT / "examples" / "deepspeed" / f"{engine}.json")}
    return {"fsdp_version": FSDP2_RECIPE["fsdp_version"], "fsdp_config": FSDP2_RECIPE["fsdp_config"]}


METHOD_KEYS = {
    "droplora": {"learning_rate": 0.002},
    # MiLoRA + DropLoRA at learning rate 0: the saved rank-2r adapter must give back the base
    "milora": {
        "peft_init_lora_weights": "milora",
        "lora_alpha": 16,
        "learning_rate": 0.0,
        "save_strategy": "steps",
        "save_steps": STEPS,
    },
    # PEFT's own SVD init: under ZeRO-3 it gathers only while transformers sees a live DeepSpeed
    # config, which the plugin keeps (Axolotl drops its own after loading the base)
    "pissa": {
        "peft_init_lora_weights": "pissa",
        "lora_alpha": 16,
        "learning_rate": 0.0,
        "save_strategy": "steps",
        "save_steps": STEPS,
    },
}
# what each engine must have really run (accelerate falls back to another one without a word)
EXPECTED_ENGINE = {
    "zero2": {"distributed_type": "DistributedType.DEEPSPEED", "deepspeed": True, "zero_stage": 2, "fsdp": False},
    "zero3": {"distributed_type": "DistributedType.DEEPSPEED", "deepspeed": True, "zero_stage": 3, "fsdp": False},
    "fsdp2": {
        "distributed_type": "DistributedType.FSDP",
        "deepspeed": False,
        "zero_stage": None,
        "fsdp": True,
        "fsdp_version": 2,
    },
}


@pytest.mark.parametrize("engine, method", CELLS, ids=[f"{e}-{m}" for e, m in CELLS])
def test_axolotl_cli_trains_two_processes_under_the_engine_and_saves_an_adapter_for_the_original_base(
    tmp_path, demo_dir, engine, method
):
    recipe = write_recipe(
        tmp_path,
        demo_dir,
        **engine_keys(engine),
        **METHOD_KEYS[method],
        plugins=["axolotl_droplora.DropLoRAPlugin", "axolotl_engine_probe.EngineProbePlugin"],
        micro_batch_size=2,
        gradient_accumulation_steps=PAPER_RECIPE["gradient_accumulation_steps"],
        gradient_checkpointing=PAPER_RECIPE["gradient_checkpointing"],
        max_steps=STEPS,
        warmup_steps=0,
        logging_steps=1,
        dataset_prepared_path=str(tmp_path / "prepared"),  # not the session's shared demo folder
    )
    # --standalone: a free rendezvous port, so cells on parallel test workers do not collide
    done = run_cli(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(LAUNCH),
            str(recipe),
        ],
        cwd=tmp_path,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]

    out = tmp_path / "out"
    ranks = [json.loads((out / f"engine-rank{rank}.json").read_text()) for rank in (0, 1)]
    for rank, seen in enumerate(ranks):
        assert (seen["rank"], seen["world_size"], seen["backend"]) == (rank, 2, "gloo"), seen
        assert {key: seen[key] for key in EXPECTED_ENGINE[engine]} == EXPECTED_ENGINE[engine], seen
        assert seen["global_step"] == STEPS and all(math.isfinite(loss) for loss in seen["losses"]), seen
        assert seen["lora_parameters"] == seen["trainable_lora_parameters"] == 2 * 10, seen
        # sharded for real: FSDP2 turns every parameter into a DTensor, ZeRO-3 partitions every one
        assert seen["dtensor_parameters"] == (seen["parameters"] if engine == "fsdp2" else 0), seen
        assert seen["zero3_parameters"] == (seen["parameters"] if engine == "zero3" else 0), seen

    assert LAYERS_LOG.format(p=0.3, mode="element", rescale=True, kind="Linear") in log
    assert ("MiLoRA: initialised 10 layers in" in log) == (method == "milora")

    tokenizer = AutoTokenizer.from_pretrained(demo_dir / "model")
    tokens = tokenizer(["What is 12 plus 30?"], return_tensors="pt").input_ids
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(demo_dir / "model").eval()(input_ids=tokens).logits
    if method == "droplora":
        assert json.loads((out / "adapter_config.json").read_text())["r"] == 16
        logits = vanilla_peft_logits(demo_dir / "model", out, tokens, tmp_path)
        assert torch.isfinite(logits).all() and (logits - base_logits).abs().max() > 1e-3  # it trained
        return

    # MiLoRA and PiSSA save B·A − B0·A0 as a rank-2r LoRA for the original base: the checkpoint
    # the Trainer wrote, and the final save Axolotl writes after training (its own code per engine)
    reference = single_process_init(
        demo_dir / "model", method, r=16, lora_alpha=16, lora_dropout=0.05, target_modules=LORA_TARGETS
    )  # the recipe's LoRA settings
    for adapter_dir in (out / f"checkpoint-{STEPS}", out):
        adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
        assert (adapter_config["peft_type"], adapter_config["r"]) == ("LORA", 32), adapter_dir
        # the A0, B0 it was converted with are the init one process computes on the whole weights
        initial = initial_adapter_of(adapter_dir)
        assert initial.keys() == reference.keys()
        for key, value in reference.items():
            torch.testing.assert_close(initial[key], value, atol=1e-5, rtol=1e-4, msg=f"{adapter_dir}: {key}")
    # at learning rate 0 the final adapter on the original base is the base model
    logits = vanilla_peft_logits(demo_dir / "model", out, tokens, tmp_path)
    torch.testing.assert_close(logits, base_logits, atol=1e-5, rtol=0)
