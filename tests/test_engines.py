"""DropLoRA, MiLoRA and PiSSA under DDP, DeepSpeed ZeRO-2/ZeRO-3 and FSDP2: 2 processes on CPU (gloo).

Each cell is one `torch.distributed.run` of tests/engine_run.py through TRL's SFTTrainer. CI runs
the cells in CI_CELLS (the engines that partition or shard the weights an SVD init reads: about
a minute each on 2 cores); `ENGINE_MATRIX=all bash scripts/test.sh tests/test_engines.py` runs the
whole engine × method matrix.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from test_trainer_callback import vanilla_peft_logits
from transformers import AutoModelForCausalLM

from axolotl_droplora.method.conversion import snapshot_initial_adapter
from axolotl_droplora.method.milora import init_milora

ENGINES = ["ddp", "zero2", "zero3", "fsdp2"]
METHODS = ["droplora-element", "droplora-batch", "milora", "pissa"]
# ZeRO-3 + PiSSA runs in CI through Axolotl's CLI (tests/test_axolotl_engines.py), where it broke
CI_CELLS = [("zero3", "milora"), ("fsdp2", "milora")]
CELLS = list(itertools.product(ENGINES, METHODS)) if os.environ.get("ENGINE_MATRIX") == "all" else CI_CELLS
RUN = Path(__file__).with_name("engine_run.py")
# as engine_run.py builds them
LORA = dict(r=4, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
TOKENS = torch.tensor([[5, 17, 42, 99, 3, 250]])


def run_engine(engine, method, model_dir, out, lr, *resume, cwd):
    """One 2-process run of engine_run.py; returns its run.json."""
    done = run_cli(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(RUN),
            engine,
            method,
            str(model_dir),
            str(out),
            lr,
            *map(str, resume),
        ],
        cwd=cwd,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return json.loads((out / "run.json").read_text())


def single_process_init(model_dir, method, **lora):
    """A0, B0 of the same init (`milora` or `pissa`) in one process, on the whole weights, with
    the LoRA settings `lora` (engine_run.py's by default)."""
    init = "pissa" if method == "pissa" else True
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(init_lora_weights=init, **(lora or LORA))
    )
    if method == "milora":
        init_milora(model)
    return snapshot_initial_adapter(model)


@pytest.mark.parametrize("engine, method", CELLS, ids=[f"{e}-{m}" for e, m in CELLS])
def test_two_process_engine_trains_and_saves_an_adapter_for_the_original_base(demo_dir, tmp_path, engine, method):
    svd_init = method in ("milora", "pissa")
    out = tmp_path / "out"
    # the SVD inits at learning rate 0: the saved rank-2r adapter must give back the base exactly
    lr = "0" if svd_init else "5e-3"
    run = run_engine(engine, method, demo_dir / "model", out, lr, cwd=tmp_path)
    used = run["used"]
    assert run["world"] == 2 and len(run["losses"]) == 4
    # the engine really ran (accelerate falls back to DDP silently where it cannot shard)
    expected = {
        "ddp": (False, None, False),
        "zero2": (True, 2, False),
        "zero3": (True, 3, False),
        "fsdp2": (False, None, True),
    }[engine]
    assert (used["deepspeed"], used["zero_stage"], used["fsdp"] and used["dtensor_params"]) == expected, used

    # what each rank holds after training: ZeRO-3 and FSDP2 split the frozen base across the two
    # ranks, every engine but DDP splits the optimizer state (the Adam moments of the LoRA weights)
    memory = run["memory"]
    assert len(memory) == 2 and all(m["trainable"] > 0 for m in memory), memory
    lora_model = get_peft_model(AutoModelForCausalLM.from_pretrained(demo_dir / "model"), LoraConfig(**LORA))
    frozen, lora = (
        sum(4 * p.numel() for p in lora_model.parameters() if p.requires_grad is trains) for trains in (False, True)
    )
    frozen_share = memory[0]["frozen"] / frozen
    assert (0.4 < frozen_share < 0.6) if engine in ("zero3", "fsdp2") else frozen_share == 1.0, memory
    # DDP: Adam's two float32 moments of every LoRA weight (and a step count each) on every rank
    adam_share = memory[0]["optimizer"] / (2 * lora)
    assert (1.0 <= adam_share < 1.01) if engine == "ddp" else adam_share < 0.8, memory
    if svd_init and method == "milora":
        assert run["init_seconds"] is not None  # the init ran (and logged its time) under this engine

    if method != "pissa":  # both ranks drew the same mask at every step (same seed), a new one each step
        masks = run["masks"]
        assert len(masks[0]) == 8 and masks[0] == masks[1]  # 4 steps x 2 micro-batches
        assert len({tuple(m) for m in masks[0]}) > 1

    base = AutoModelForCausalLM.from_pretrained(demo_dir / "model").eval()
    with torch.no_grad():
        base_logits = base(input_ids=TOKENS).logits
    saved_r = json.loads((out / "adapter_config.json").read_text())["r"]
    logits = vanilla_peft_logits(demo_dir / "model", out, TOKENS, tmp_path)
    if svd_init:
        # every rank's init equals one process's init of the whole weights
        initial = load_file(out / "initial.safetensors")
        reference = single_process_init(demo_dir / "model", method)
        assert initial.keys() == reference.keys()
        for key, value in reference.items():
            torch.testing.assert_close(initial[key], value, atol=1e-5, rtol=1e-4, msg=key)
        assert saved_r == 2 * LORA["r"]
        for checkpoint in (out / "checkpoint-2", out / "checkpoint-4"):
            assert json.loads((checkpoint / "adapter_config.json").read_text())["r"] == 2 * LORA["r"], checkpoint
        torch.testing.assert_close(logits, base_logits, atol=1e-5, rtol=0)
    else:
        assert saved_r == LORA["r"]
        assert torch.isfinite(logits).all() and (logits - base_logits).abs().max() > 1e-4  # it trained


def test_a_milora_run_under_zero2_resumed_from_a_checkpoint_gives_the_uninterrupted_losses(demo_dir, tmp_path):
    """DeepSpeed resumes from its own checkpoint files (the residual A, B and the optimizer
    partitions), beside the converted adapter the callback writes into the same folder."""
    model_dir = demo_dir / "model"
    straight = run_engine("zero2", "milora", model_dir, tmp_path / "straight", "5e-3", cwd=tmp_path)
    assert len(straight["losses"]) == 4
    # a preempted run: its output folder holds only what the first 2 steps wrote
    shutil.copytree(tmp_path / "straight" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed = run_engine(
        "zero2", "milora", model_dir, tmp_path / "resumed", "5e-3", tmp_path / "resumed" / "checkpoint-2", cwd=tmp_path
    )
    assert resumed["used"]["zero_stage"] == 2
    # the Trainer's log history carries the first 2 steps' losses over from the checkpoint
    assert resumed["losses"] == straight["losses"], (resumed["losses"], straight["losses"])
    # steps 3-4 (2 micro-batches each) drew the masks the uninterrupted run drew there
    assert resumed["masks"][0] == straight["masks"][0][4:] and resumed["masks"][0] == resumed["masks"][1]
    final, expected = (load_file(tmp_path / run / "adapter_model.safetensors") for run in ("resumed", "straight"))
    assert final.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(final[key], value, atol=1e-6, rtol=0, msg=key)
