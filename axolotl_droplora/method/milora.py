"""MiLoRA: initialise LoRA from the minor singular components of each target weight.

For a target weight W (d_out × d_in) = U·diag(S)·Vᵀ, singular values descending, take the r
smallest triplets (U_m: d_out × r, S_m: r, V_m: d_in × r). With s the layer's LoRA scaling
(α/r, or α/√r with rsLoRA):

    B = U_m · diag(√(S_m / s))                     (d_out × r)
    A = diag(√(S_m / s)) · V_mᵀ                    (r × d_in)
    W_p = W − s·B·A = W − U_m·diag(S_m)·V_mᵀ       the frozen base keeps the principal part

so W_p + s·B·A = W and the model's output at step 0 is unchanged. As in the authors' code and
the papers, recipes use lora_alpha = r (s = 1).

The minor triplets come from the eigendecomposition of the float64 Gram matrix (W·Wᵀ or Wᵀ·W,
whichever is smaller), batched over weights of the same shape, on the weight's own device:
λ = σ², the eigenvectors are one side's singular vectors and the other side follows from W.
Only the r smallest eigenpairs are computed on CPU (LAPACK's selective solver); all of them,
batched, on GPU. In float64 the r smallest σ match a float64 SVD far better than the authors'
float32 SVD does, in less time (bench/bench_milora_init.py measures both).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import scipy.linalg
import torch
from peft.tuners.lora import LoraLayer
from tqdm.auto import tqdm

from .conversion import gathered
from .exact_init import check_supported, install_initial_term
from .lora_layers import lora_layers

LOG = logging.getLogger(__name__)
BATCH_BYTES = 1 << 30  # stack at most this many bytes of float64 Gram matrices at once
# why an SVD init cannot run with FSDP's cpu_ram_efficient_loading (the plugin's config check,
# the callback's check of TrainingArguments, and the init itself say it)
META_WEIGHTS_REASON = (
    "off rank 0 the base weights are empty (meta device) until FSDP wraps the model, after the SVD init"
)


def loads_weights_on_rank_0_only(fsdp_config: dict | None) -> bool:
    """FSDP's cpu_ram_efficient_loading (as Axolotl or TrainingArguments spell it): the base
    weights are real on rank 0 only until FSDP wraps the model (META_WEIGHTS_REASON)."""
    fsdp_config = fsdp_config or {}
    return bool(fsdp_config.get("cpu_ram_efficient_loading") or fsdp_config.get("fsdp_cpu_ram_efficient_loading"))


def _target_layers(model: torch.nn.Module, adapter_name: str) -> list[tuple[str, LoraLayer]]:
    layers = list(lora_layers(model, adapter_name))
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
        if base.weight.is_meta:
            raise ValueError(
                f"MiLoRA needs the base weights' values on every process, but {name}'s weight is on "
                f"the meta device (with fsdp cpu_ram_efficient_loading, {META_WEIGHTS_REASON}): turn "
                f"cpu_ram_efficient_loading off in fsdp_config for an SVD init"
            )
        shape = full_shape(base.weight)
        if len(shape) != 2 or min(shape) == 0:
            raise ValueError(
                f"MiLoRA needs each target weight whole, but {name}'s weight is {tuple(shape)} here: "
                f"it is partitioned or sharded by an engine that the init cannot gather (ZeRO-3 is "
                f"gathered; FSDP shards only after the init). Initialise before the model is "
                f"sharded, or without fsdp_cpu_ram_efficient_loading"
            )
        if layer.r[adapter_name] > min(shape):
            raise ValueError(
                f"MiLoRA takes the r={layer.r[adapter_name]} smallest singular triplets, but {name} "
                f"is {tuple(shape)} and has only {min(shape)}: lower lora_r"
            )
    return layers


@torch.no_grad()
def init_milora(model: torch.nn.Module, adapter_name: str = "default", exact: bool = False) -> int:
    """Re-initialise every LoRA layer of `model` with MiLoRA, in place.

    For each targeted weight W (d_out, d_in) = U·diag(S)·Vᵀ and the layer's rank r and scale s:
    B = U_m·diag(√(S_m/s)) (d_out, r), A = diag(√(S_m/s))·V_mᵀ (r, d_in) from the r smallest
    singular triplets, and the frozen base becomes W_p = W − s·B·A, so W_p + s·B·A = W.

    Args:
        model: a PEFT model built with a standard LoraConfig (PEFT has no "milora" init).
        adapter_name: the adapter to initialise (default "default").
        exact: (`svd_init_exact`) keep W as the base weight and subtract s·B0·A0·x in each
            layer's forward instead (method/exact_init.py): the model starts from the base bit for
            bit, where a bf16 W_p would round most of the minor components away.

    Returns:
        How many LoRA layers were initialised.

    Raises:
        ValueError: no LoRA layer carries `adapter_name`; a base layer that is not a full-precision
            nn.Linear (quantized), or fan_in_fan_out; weights not loaded on this rank (the meta
            device: FSDP's cpu_ram_efficient_loading); or, with `exact=True`, a DoRA layer. All
            before anything changes.

    Under DeepSpeed ZeRO-3 each rank holds only a partition of every weight: the layers are
    gathered a few at a time (`conversion.gathered`, DeepSpeed's GatheredParameters, decided by
    the parameters themselves: PEFT's gather_params_ctx, which PEFT puts around its PiSSA init,
    gathers nothing inside Axolotl's model-load hooks), every rank decomposes the same full
    weights, and rank 0's W_p, A, B are what is partitioned again, so all ranks end with the init
    a single process computes.
    """
    layers = [layer for _, layer in _target_layers(model, adapter_name)]
    for layer in layers if exact else []:
        check_supported(layer, adapter_name)  # before anything changes
    by_rank = defaultdict(list)  # ranks differ between layers with lora_rank_pattern
    for layer in layers:
        by_rank[layer.r[adapter_name]].append(layer)
    start = time.perf_counter()
    with tqdm(total=len(layers), desc="MiLoRA init", unit="layer") as progress:
        for rank, group in by_rank.items():
            for chunk in _gather_chunks(group):
                with gathered(_init_params(chunk, adapter_name), modifier_rank=0):
                    weights = [layer.get_base_layer().weight for layer in chunk]
                    for layer, triplet in zip(chunk, minor_components(weights, rank, progress.update)):
                        _set_minor_components(layer, adapter_name, *triplet, exact=exact)
    LOG.info(f"MiLoRA: initialised {len(layers)} layers in {time.perf_counter() - start:.2f} s")
    return len(layers)


def full_shape(weight: torch.Tensor) -> torch.Size:
    """The weight's shape as the model defines it; ZeRO-3 leaves a (0,) placeholder in `.shape`."""
    return getattr(weight, "ds_shape", weight.shape)


def _gather_chunks(layers: list[LoraLayer]) -> list[list[LoraLayer]]:
    """All layers at once where the weights are whole; ZeRO-3-partitioned ones a few at a time,
    so that at most BATCH_BYTES of float64 copies of gathered weights exist at once."""
    if not any(hasattr(layer.get_base_layer().weight, "ds_id") for layer in layers):
        return [layers]
    chunks, size = [[]], 0
    for layer in layers:
        nbytes = 8 * full_shape(layer.get_base_layer().weight).numel()
        if chunks[-1] and size + nbytes > BATCH_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(layer)
        size += nbytes
    return chunks


def _init_params(layers: list[LoraLayer], adapter: str) -> list[torch.nn.Parameter]:
    """What the init reads or writes in each layer: the base weight, A, B (and DoRA's magnitude)."""
    params = []
    for layer in layers:
        params += [layer.get_base_layer().weight, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight]
        if layer.use_dora.get(adapter):
            params.append(layer.lora_magnitude_vector[adapter].weight)
    return params


@torch.no_grad()
def minor_components(weights: list[torch.Tensor], rank: int, on_batch=None) -> list[tuple[torch.Tensor, ...]]:
    """(U_m, S_m, V_mᵀ) in float32, S_m descending, for each weight; same shapes share a batch."""
    by_shape = defaultdict(list)
    for index, weight in enumerate(weights):
        by_shape[tuple(weight.shape), weight.device].append(index)
    triplets = [None] * len(weights)
    for (shape, _), indices in by_shape.items():
        per_batch = max(1, BATCH_BYTES // (8 * min(shape) ** 2))
        for first in range(0, len(indices), per_batch):
            batch = indices[first : first + per_batch]
            for index, triplet in zip(batch, _minor_components_batch([weights[i] for i in batch], rank)):
                triplets[index] = triplet
            if on_batch:
                on_batch(len(batch))
    return triplets


def _minor_components_batch(weights: list[torch.Tensor], rank: int) -> list[tuple[torch.Tensor, ...]]:
    w = torch.stack([weight.double() for weight in weights])  # (batch, m, n)
    wide = w.shape[1] <= w.shape[2]
    gram = w @ w.mT if wide else w.mT @ w  # (batch, k, k), k = min(m, n)
    eigenvalues, vectors = _smallest_eigenpairs(gram, rank)  # ascending
    sigma = eigenvalues.flip(-1).clamp_min(0).sqrt()
    vectors = vectors.flip(-1)
    # the other side's vectors from W itself; σ floored so a zero singular value gives zeros
    safe = sigma.clamp_min(torch.finfo(torch.float64).tiny ** 0.5)[:, :, None]
    if wide:
        u, vh = vectors, (vectors.mT @ w) / safe
    else:
        u, vh = (w @ vectors) / safe.mT, vectors.mT
    return [(u[i].float(), sigma[i].float(), vh[i].float()) for i in range(len(weights))]


def _smallest_eigenpairs(gram: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `rank` smallest eigenvalues (ascending) and eigenvectors of each symmetric matrix."""
    if gram.device.type != "cpu":
        eigenvalues, eigenvectors = torch.linalg.eigh(gram)  # cuSOLVER: all pairs, batched
        return eigenvalues[:, :rank], eigenvectors[:, :, :rank]
    # LAPACK's selective solver computes only the pairs asked for: ~2.5x faster than all of them
    pairs = [scipy.linalg.eigh(g.numpy(), subset_by_index=[0, rank - 1], driver="evx") for g in gram]
    return (
        torch.stack([torch.from_numpy(values) for values, _ in pairs]),
        torch.stack([torch.from_numpy(vectors) for _, vectors in pairs]),
    )


def _set_minor_components(layer: LoraLayer, adapter: str, u_m, s_m, vh_m, exact: bool = False) -> None:
    scaling = layer.scaling[adapter]
    root = torch.sqrt(s_m / scaling)
    lora_a, lora_b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    base = layer.get_base_layer().weight
    original = base.float().clone()  # .float() of a float32 weight is the weight itself
    lora_b.copy_(u_m * root)  # U_m · diag(√(S_m/s))
    lora_a.copy_(root[:, None] * vh_m)  # diag(√(S_m/s)) · V_mᵀ
    # subtract what the stored (possibly bf16) A and B actually give, so W_p + s·B·A = W
    # holds for the model as it runs
    if exact:  # W stays; the forward subtracts s·B0·A0 (exact_init.py)
        install_initial_term(layer, adapter)
    else:
        delta = scaling * (lora_b.float() @ lora_a.float())
        base.copy_((original - delta).to(base.dtype))
    if layer.use_dora.get(adapter):
        # DoRA's magnitude is the row norm of the weight it normalises, W_p + s·B·A = W
        magnitude = layer.lora_magnitude_vector[adapter].weight
        magnitude.copy_(torch.linalg.norm(original, dim=1).to(magnitude.dtype))
