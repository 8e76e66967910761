"""Save-time conversion: an adapter trained on a residual base, made valid on the original base.

MiLoRA (and PiSSA) move s·B0·A0 out of the frozen weight: W = W_p + s·B0·A0. After training the
model computes W_p + s·B·A = W + s·(B·A − B0·A0): a LoRA of rank 2r on the original W,

    A' = [A; A0]  (2r × d_in)      B' = [B, −B0]  (d_out × 2r)

with r' = 2r and α' = 2α (√2·α with rsLoRA, where s = α/√r), so s' = s. This is the conversion
PEFT documents for PiSSA (`path_initial_model_for_weight_conversion`); here it runs without that
argument, so that any save (Trainer checkpoints, `trainer.save_model()`, Axolotl's final save)
writes an adapter that vanilla PEFT, vLLM and `merge-lora` apply to the unmodified base model.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from .exact_init import remove_initial_term
from .lora_layers import alpha_for_doubled_rank, lora_layers

ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"


def snapshot_initial_adapter(model, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """A0, B0 of every layer, whole and on CPU, keyed as in the saved adapter file.

    Whole under every engine: ZeRO-3-partitioned LoRA weights are gathered for the copy, FSDP2's
    DTensors are assembled (`full_tensor`, a collective: every rank must call this).
    """
    lora = [p for name, p in model.named_parameters() if f".{adapter_name}." in name and ".lora_" in name]
    with gathered(lora, modifier_rank=None):  # read only
        state = get_peft_model_state_dict(model, adapter_name=adapter_name)
        return {key: _whole(value).detach().to("cpu", copy=True) for key, value in state.items() if ".lora_" in key}


@contextmanager
def gathered(params, modifier_rank: int | None):
    """DeepSpeed ZeRO-3-partitioned parameters among `params` gathered whole for the block (as
    `deepspeed.zero.GatheredParameters`: with `modifier_rank`, that rank's writes are partitioned
    again); a no-op for any other parameter.

    Not PEFT's `gather_params_ctx`: it gathers only if transformers' `is_deepspeed_zero3_enabled()`
    says so, and that reads a weak reference to the DeepSpeed config that only a live
    TrainingArguments keeps. Axolotl loads the model partitioned (zero.Init) before any exists,
    so during its model-load hooks the answer is False and nothing would be gathered: whether
    to gather is asked of the parameters themselves.
    """
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor  # FSDP2's DTensor


def is_partitioned(tensor: torch.Tensor) -> bool:
    """Partitioned by DeepSpeed ZeRO-3 (`ds_id`) or sharded by FSDP2 (a DTensor)."""
    return hasattr(tensor, "ds_id") or hasattr(tensor, "full_tensor")


def to_original_base(state: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter file's tensors with A' = [A; A0] and B' = [B, −B0]."""
    converted = dict(state)
    for key, init in initial.items():
        init = init.to(state[key].dtype)
        if ".lora_A." in key:
            converted[key] = torch.cat([state[key], init], dim=0)
        elif ".lora_B." in key:
            converted[key] = torch.cat([state[key], -init], dim=1)
    return converted


def doubled_rank_config(config: dict) -> dict:
    """adapter_config.json for the rank-2r adapter, with the same scaling."""
    config = dict(config, init_lora_weights=True, r=2 * config["r"])
    config["lora_alpha"] = alpha_for_doubled_rank(config["lora_alpha"], config.get("use_rslora", False))
    for pattern in ("rank_pattern", "alpha_pattern"):
        if config.get(pattern):
            config[pattern] = {key: 2 * value for key, value in config[pattern].items()}
    return config


def convert_adapter_dir(
    adapter_dir: str | Path, initial: dict[str, torch.Tensor], keep_trained_as: str | None = None
) -> None:
    """Rewrite a saved residual-base adapter (a checkpoint) in place for the original base.

    With `keep_trained_as=NAME`, the adapter as trained (rank r, for the residual base) is kept
    in the subfolder NAME first: transformers' Trainer, resuming from a checkpoint, loads an
    adapter found in a subfolder into the model's adapter of that name, so a run resumes from
    the residual state it left while the top-level adapter stays valid on the original base.
    Written to a scratch folder first and swapped in file by file, so a crash leaves either the
    old adapter or the new one, never a mixture that looks complete.
    """
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    if config.get("init_lora_weights") is True and config["r"] == 2 * _rank_of(initial):
        return  # already converted
    if keep_trained_as:
        kept = adapter_dir / keep_trained_as
        scratch = adapter_dir / ".keeping"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
            shutil.copy2(adapter_dir / name, scratch / name)
        shutil.rmtree(kept, ignore_errors=True)
        scratch.rename(kept)
    scratch = adapter_dir / ".converting"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    save_file(
        to_original_base(load_file(adapter_dir / ADAPTER_WEIGHTS), initial),
        scratch / ADAPTER_WEIGHTS,
        metadata={"format": "pt"},
    )
    (scratch / ADAPTER_CONFIG).write_text(json.dumps(doubled_rank_config(config), indent=2))
    os.replace(scratch / ADAPTER_WEIGHTS, adapter_dir / ADAPTER_WEIGHTS)
    os.replace(scratch / ADAPTER_CONFIG, adapter_dir / ADAPTER_CONFIG)
    scratch.rmdir()


def initial_adapter_of(adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    """A0, B0 back from a converted adapter: the second halves of A' = [A; A0], B' = [B, −B0]."""
    initial = {}
    for key, value in load_file(Path(adapter_dir) / ADAPTER_WEIGHTS).items():
        if ".lora_A." in key:
            initial[key] = value[value.shape[0] // 2 :]
        elif ".lora_B." in key:
            initial[key] = -value[:, value.shape[1] // 2 :]
    return initial


def _rank_of(initial: dict[str, torch.Tensor]) -> int:
    return next(value.shape[0] for key, value in initial.items() if ".lora_A." in key)


@torch.no_grad()
def fold_into_original_base(model, initial: dict[str, torch.Tensor], adapter_name: str = "default") -> None:
    """In memory, at the end of training: W_p → W_p + s·B0·A0 and the adapter → rank 2r.

    The model computes the same function before and after (up to the base dtype's rounding; with
    `svd_init_exact` the base weight is W already and stays untouched: the frozen −s·B0·A0 term
    becomes the adapter's second half, up to the adapter dtype's rounding of the sum); afterwards
    it is a plain LoRA on the original base, whatever saves it next.
    """
    for name, layer in lora_layers(model, adapter_name):
        a0, b0 = (initial[f"{name}.lora_{ab}.weight"] for ab in "AB")
        lora_a, lora_b = layer.lora_A[adapter_name], layer.lora_B[adapter_name]
        a0, b0 = a0.to(lora_a.weight), b0.to(lora_b.weight)
        base = layer.get_base_layer().weight
        scaling = layer.scaling[adapter_name]
        if not remove_initial_term(layer):  # svd_init_exact kept W itself as the base weight
            base.copy_((base.float() + scaling * (b0.float() @ a0.float())).to(base.dtype))
        lora_a.weight = torch.nn.Parameter(torch.cat([lora_a.weight, a0]), lora_a.weight.requires_grad)
        lora_b.weight = torch.nn.Parameter(torch.cat([lora_b.weight, -b0], dim=1), lora_b.weight.requires_grad)
        lora_a.out_features = lora_b.in_features = lora_a.weight.shape[0]
        layer.r[adapter_name] *= 2
        layer.lora_alpha[adapter_name] = alpha_for_doubled_rank(
            layer.lora_alpha[adapter_name], layer.use_rslora[adapter_name]
        )
    config = model.peft_config[adapter_name]
    for key, value in doubled_rank_config(config.to_dict()).items():
        if key in ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "init_lora_weights"):
            setattr(config, key, value)
