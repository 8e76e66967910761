"""MiLoRA: initialise LoRA from the minor singular components of each target weight.

For a target weight W (d_out × d_in) = U·diag(S)·Vᵀ, singular values descending, take the r
smallest triplets (U_m: d_out × r, S_m: r, V_m: d_in × r). With s the layer's LoRA scaling
(α/r, or α/√r with rsLoRA):

    B = U_m · diag(√(S_m / s))                     (d_out × r)
    A = diag(√(S_m / s)) · V_mᵀ                    (r × d_in)
    W_p = W − s·B·A = W − U_m·diag(S_m)·V_mᵀ       the frozen base keeps the principal part

so W_p + s·B·A = W and the model's output at step 0 is unchanged. The SVD is a full one in
float32 (weights may be bf16/fp16) on the weight's own device, batched over weights of the
same shape. As in the authors' code and the papers, recipes use lora_alpha = r (s = 1).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import torch
from peft.tuners.lora import LoraLayer
from tqdm.auto import tqdm

LOG = logging.getLogger(__name__)
SVD_BATCH_BYTES = 1 << 30  # stack at most this many bytes of float32 weights into one batched SVD


def _target_layers(model: torch.nn.Module, adapter_name: str) -> list[tuple[str, LoraLayer]]:
    layers = [
        (name, module) for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A
    ]
    if not layers:
        raise ValueError(
            f"MiLoRA needs a PEFT LoRA model with adapter {adapter_name!r}, but "
            f"{type(model).__name__} has none: wrap it with peft.get_peft_model(model, LoraConfig(...))"
        )
    for name, layer in layers:
        base = layer.get_base_layer()
        if not isinstance(base, torch.nn.Linear) or type(base.weight) is not torch.nn.Parameter:
            raise ValueError(
                f"MiLoRA needs full-precision nn.Linear base layers; {name} wraps "
                f"{type(base).__name__} (quantized or non-linear bases are not supported)"
            )
        if getattr(layer, "fan_in_fan_out", False):
            raise ValueError(f"MiLoRA does not support fan_in_fan_out layers ({name})")
    return layers


@torch.no_grad()
def init_milora(model: torch.nn.Module, adapter_name: str = "default") -> int:
    """Re-initialise every LoRA layer of `model` with MiLoRA, in place. Returns the layer count."""
    layers = _target_layers(model, adapter_name)
    by_shape = defaultdict(list)
    for name, layer in layers:
        weight = layer.get_base_layer().weight
        by_shape[(tuple(weight.shape), weight.device, layer.r[adapter_name])].append(layer)

    start = time.perf_counter()
    with tqdm(total=len(layers), desc="MiLoRA init (SVD)", unit="layer") as progress:
        for (shape, _, rank), group in by_shape.items():
            per_batch = max(1, SVD_BATCH_BYTES // (4 * shape[0] * shape[1]))
            for first in range(0, len(group), per_batch):
                batch = group[first:first + per_batch]
                weights = torch.stack([layer.get_base_layer().weight.float() for layer in batch])
                u, s, vh = torch.linalg.svd(weights, full_matrices=False)
                for i, layer in enumerate(batch):
                    _set_minor_components(layer, adapter_name, u[i, :, -rank:], s[i, -rank:], vh[i, -rank:, :])
                progress.update(len(batch))
    LOG.info(f"MiLoRA: initialised {len(layers)} layers in {time.perf_counter() - start:.1f} s")
    return len(layers)


def _set_minor_components(layer: LoraLayer, adapter: str, u_m, s_m, vh_m) -> None:
    scaling = layer.scaling[adapter]
    root = torch.sqrt(s_m / scaling)
    lora_a, lora_b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    base = layer.get_base_layer().weight
    original = base.float().clone()  # .float() of a float32 weight is the weight itself
    lora_b.copy_(u_m * root)  # U_m · diag(√(S_m/s))
    lora_a.copy_(root[:, None] * vh_m)  # diag(√(S_m/s)) · V_mᵀ
    # subtract what the stored (possibly bf16) A and B actually give, so W_p + s·B·A = W
    # holds for the model as it runs
    delta = scaling * (lora_b.float() @ lora_a.float())
    base.copy_((original - delta).to(base.dtype))
    if layer.use_dora.get(adapter):
        # DoRA's magnitude is the row norm of the weight it normalises, W_p + s·B·A = W
        magnitude = layer.lora_magnitude_vector[adapter].weight
        magnitude.copy_(torch.linalg.norm(original, dim=1).to(magnitude.dtype))
