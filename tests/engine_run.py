"""One 2-process training run under an engine, through TRL's SFTTrainer + DropLoRACallback.

    python -m torch.distributed.run --nproc_per_node 2 engine_run.py ENGINE METHOD MODEL_DIR OUT LR [RESUME]

ENGINE: ddp, zero2, zero3 (examples/deepspeed/ENGINE.json), fsdp2. METHOD: droplora-element,
droplora-batch, milora (+ DropLoRA p = 0.5, batch masks), pissa. RESUME: a checkpoint folder to
resume from. Rank 0 writes OUT/run.json: the engine really used, the masks the first LoRA layer
drew on each rank, the step losses, each rank's bytes of parameters and optimizer state it holds
after training, and MiLoRA's init time; for the SVD inits also the A0, B0 the init gave
(OUT/initial.safetensors). The CPU set-up below works around accelerate and transformers lines
that assume a GPU; none of it is in the package, and none is needed on GPUs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import PartialState
from accelerate.utils import DistributedType
from datasets import Dataset
from peft import LoraConfig
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer

from axolotl_droplora import DropLoRACallback, installed_rank_dropout

engine, method, model_dir, out, lr, *resume = sys.argv[1:]
LORA_R = int(os.environ.get("ENGINE_RUN_LORA_R", 4))  # bench/bench_engines.py sets a larger one


class InitTime(logging.Handler):
    """MiLoRA's init time, from the line init_milora logs."""

    seconds = None

    def emit(self, record):
        found = re.search(r"MiLoRA: initialised \d+ layers in ([0-9.]+) s", record.getMessage())
        if found:
            InitTime.seconds = float(found.group(1))


logging.getLogger("axolotl_droplora").setLevel(logging.INFO)
logging.getLogger("axolotl_droplora").addHandler(InitTime())


def held_bytes(tensor) -> int:
    """Bytes of `tensor` this rank holds: ZeRO-3's partition (and the whole of a parameter it
    keeps unpartitioned, `ds_persist`), FSDP2's local shard, or the tensor."""
    if hasattr(tensor, "ds_tensor"):
        whole = tensor.ds_numel * tensor.element_size() if getattr(tensor, "ds_persist", False) else 0
        return whole + tensor.ds_tensor.numel() * tensor.ds_tensor.element_size()
    if hasattr(tensor, "to_local"):
        tensor = tensor.to_local()
    return tensor.numel() * tensor.element_size()


def memory_held(model, optimizer) -> dict:
    """This rank's bytes of frozen and trainable parameters, and of optimizer state: the moments
    plus any master copies of the trainable weights the optimizer steps (DeepSpeed's fp32
    partitions), found on the innermost torch optimizer."""
    while hasattr(optimizer, "optimizer"):  # accelerate's and DeepSpeed's wrappers
        optimizer = optimizer.optimizer
    params = list(model.parameters())
    model_tensors = {id(p) for p in params}
    state = sum(
        held_bytes(value)
        for per_param in optimizer.state.values()
        for value in per_param.values()
        if torch.is_tensor(value)
    )
    masters = sum(
        held_bytes(p) for group in optimizer.param_groups for p in group["params"] if id(p) not in model_tensors
    )
    return {
        "frozen": sum(held_bytes(p) for p in params if not p.requires_grad),
        "trainable": sum(held_bytes(p) for p in params if p.requires_grad),
        "optimizer": state + masters,
    }


class MemoryAfterEachStep(TrainerCallback):
    """memory_held after each optimizer step: the last is what training held, before a
    MiLoRA/PiSSA run's end-of-training fold doubles the adapter (DDP, ZeRO-2)."""

    held = None

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.held = memory_held(model, optimizer)


# the configs users get: the paper recipes' ZeRO-2 file, and the ZeRO-3 one for larger bases
DEEPSPEED = Path(__file__).resolve().parents[1] / "examples" / "deepspeed" / f"{engine}.json"
engine_args = {}
if engine in ("zero2", "zero3"):
    # accelerate's state picks no process-group backend on CPU when DeepSpeed is on
    # (accelerate/state.py, PartialState.__init__: `backend` stays None for DeepSpeed without
    # a GPU), so every rank would think it is rank 0 of 1: build the gloo state first and let
    # the Trainer use it (AcceleratorConfig.use_configured_state)
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    engine_args = dict(deepspeed=str(DEEPSPEED), accelerator_config={"use_configured_state": True})
elif engine == "fsdp2":
    # accelerate turns FSDP on only for GPU-like distributed types (Accelerator.__init__ checks
    # `distributed_type not in (MULTI_GPU, MULTI_NPU, ...)`), and `use_cpu` silently gives DDP:
    # a gloo state that calls itself MULTI_GPU keeps the device on CPU and FSDP on
    state = PartialState(backend="gloo")
    state.distributed_type = DistributedType.MULTI_GPU
    engine_args = dict(
        fsdp="full_shard",
        accelerator_config={"use_configured_state": True},
        fsdp_config={
            "fsdp_version": 2,
            "reshard_after_forward": True,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
        },
    )
else:
    engine_args = dict(use_cpu=True, ddp_backend="gloo")

args = SFTConfig(
    output_dir=out,
    max_steps=4,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=2,
    learning_rate=float(lr),
    report_to=[],
    max_length=32,
    bf16=False,
    seed=0,
    gradient_checkpointing=False,
    save_strategy="steps",
    save_steps=2,
    logging_steps=1,
    **engine_args,
)
# after the arguments: under ZeRO-3 they switch on transformers' zero.Init, so the base weights
# are partitioned as they load (each rank holds an empty placeholder until gathered)
model = AutoModelForCausalLM.from_pretrained(model_dir)
# rows of equal length: every rank draws its random numbers in tensors of the same shapes
data = Dataset.from_list(
    [{"text": f"What is {a} plus {b}? The answer is {a + b}."} for a in range(10, 40) for b in range(10, 20)]
)
mask_mode = method.split("-")[1] if method.startswith("droplora") else "batch"
callback = DropLoRACallback(
    rank_dropout=None if method == "pissa" else 0.5, mask_mode=mask_mode, milora=method == "milora"
)
trainer = SFTTrainer(
    model=model,
    processing_class=AutoTokenizer.from_pretrained(model_dir),
    args=args,
    train_dataset=data,
    peft_config=LoraConfig(
        r=LORA_R,
        lora_alpha=LORA_R,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights="pissa" if method == "pissa" else True,
    ),
    callbacks=[callback, step_memory := MemoryAfterEachStep()],
)
initial = callback.initial_adapter
masks = []
if callback.rank_dropout is not None:
    first_layer = next(iter(installed_rank_dropout(trainer.model).values()))
    first_layer.register_forward_hook(
        lambda module, inputs, output: masks.append((output == 0).flatten()[:128].tolist()) if module.training else None
    )
trainer.train(resume_from_checkpoint=resume[0] if resume else None)
trainer.save_model()
gathered, memory = [None] * dist.get_world_size(), [None] * dist.get_world_size()
dist.all_gather_object(gathered, masks)
dist.all_gather_object(memory, step_memory.held)
if dist.get_rank() == 0:
    wrapped = trainer.model_wrapped
    used = {
        "deepspeed": getattr(trainer, "is_deepspeed_enabled", False) and trainer.deepspeed is not None,
        "zero_stage": trainer.deepspeed.zero_optimization_stage() if trainer.is_deepspeed_enabled else None,
        "fsdp": trainer.is_fsdp_enabled,
        "dtensor_params": any(type(p).__name__ == "DTensor" for p in trainer.model.parameters()),
        "wrapper": type(wrapped).__name__,
    }
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    with open(f"{out}/run.json", "w") as f:
        json.dump(
            {
                "world": dist.get_world_size(),
                "used": used,
                "masks": gathered,
                "losses": losses,
                "memory": memory,
                "init_seconds": InitTime.seconds,
            },
            f,
        )
    if initial is not None:
        save_file({k: v.contiguous() for k, v in initial.items()}, f"{out}/initial.safetensors")
dist.barrier()
