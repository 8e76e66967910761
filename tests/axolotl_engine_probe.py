"""Test-only Axolotl plugin: each rank records which engine its trainer really trained under.

`plugins: [axolotl_engine_probe.EngineProbePlugin]` (importable when tests/ is on sys.path, as it
is for tests/axolotl_cpu_launch.py). Each rank writes OUTPUT_DIR/engine-rank{RANK}.json when
training ends: accelerate can fall back to another engine without a word (FSDP becomes DDP on a
CPU-type state, DeepSpeed a 1-process run when no backend is picked), so a run that merely
finishes proves nothing about the engine.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch.distributed as dist
from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback


class EngineProbePlugin(BasePlugin):
    def add_callbacks_post_trainer(self, cfg, trainer):
        return [EngineProbe(trainer, Path(cfg.output_dir))]


class EngineProbe(TrainerCallback):
    def __init__(self, trainer, output_dir: Path):
        self.trainer, self.output_dir = trainer, output_dir
        self.seen: dict = {}

    def on_train_begin(self, args, state, control, **kwargs):
        # after the trainer has handed the model to the engine (deepspeed.initialize or fully_shard)
        trainer = self.trainer
        parameters = dict(trainer.model.named_parameters())
        lora = [p for name, p in parameters.items() if ".lora_" in name]
        self.seen = {
            "rank": dist.get_rank(),
            "world_size": dist.get_world_size(),
            "backend": dist.get_backend(),
            "distributed_type": str(trainer.accelerator.distributed_type),
            "deepspeed": bool(trainer.is_deepspeed_enabled and trainer.deepspeed is not None),
            "zero_stage": trainer.deepspeed.zero_optimization_stage() if trainer.is_deepspeed_enabled else None,
            "fsdp": trainer.is_fsdp_enabled,
            "fsdp_version": trainer.accelerator.state.fsdp_plugin.fsdp_version if trainer.is_fsdp_enabled else None,
            # FSDP2 shards into DTensors; ZeRO-3 leaves a placeholder with a `ds_id` on each rank
            "parameters": len(parameters),
            "dtensor_parameters": sum(type(p).__name__ == "DTensor" for p in parameters.values()),
            "zero3_parameters": sum(hasattr(p, "ds_id") for p in parameters.values()),
            "lora_parameters": len(lora),
            "trainable_lora_parameters": sum(p.requires_grad for p in lora),
        }

    def on_train_end(self, args, state, control, **kwargs):
        losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
        record = {**self.seen, "global_step": state.global_step, "losses": losses}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / f"engine-rank{self.seen['rank']}.json").write_text(json.dumps(record, indent=1))
