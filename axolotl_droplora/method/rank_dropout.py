"""Rank dropout: DropLoRA's random mask between LoRA's A and B.

    h = W0·x + s · B · (M ⊙ (A · dropout(x)))       s = lora_alpha / r   (α / √r with rsLoRA)

Shapes: x (batch, tokens, d_in), A (r, d_in), B (d_out, r), A·x (batch, tokens, r).
Each entry of M keeps its rank channel with probability 1 − p and is 0 otherwise; kept entries
are 1/(1 − p) (so E[M] = 1) unless rescaling is off, then 1. M is drawn afresh at every forward
in training mode; in eval mode M = 1, so the model is plain LoRA and merges as plain LoRA.

The shape of M (broadcast over A·x) is the mask mode:
  element   (batch, tokens, r)  per token and rank channel: `nn.Dropout(p)` on A·x, exactly
                                what the authors' released code does (the default)
  sequence  (batch, 1, r)       one mask per sequence (per packed row with sample packing),
                                shared by all its tokens
  batch     (r,)                one mask per forward, shared by the whole batch: the paper's
                                Eq. 2 with M ∈ {0,1}^r; dropped channels get exactly zero
                                gradient in that step

The mask is applied by a forward hook on each `lora_A[adapter]` module, with the `RankDropout`
module registered as its child so that `model.train()` / `model.eval()` reach it and
`print(model)` shows it. It owns no parameter or buffer: the state dict, and so the saved
adapter, is exactly PEFT's LoRA.

DoRA: the mask acts on DoRA's activation path, lora_B(M ⊙ lora_A(x)). PEFT also calls lora_A on
an identity matrix to get B·A for DoRA's (detached) weight norm; that call is left unmasked, so
the norm is ‖W + s·B·A‖ as in DoRA, not a norm of a randomly masked weight.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .lora_layers import lora_layers

MASK_MODES = ("element", "sequence", "batch")


def check_rank_dropout_args(p: float, mask_mode: str) -> None:
    """Raise ValueError naming the bad argument; shared by the API, the plugin and TRL."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(
            f"rank dropout p must be a number in [0, 1) (the fraction of rank channels "
            f"dropped per step; the paper recommends 0.3), got {p!r}"
        )
    if mask_mode not in MASK_MODES:
        raise ValueError(f"unknown rank dropout mask mode {mask_mode!r}; choose one of {', '.join(MASK_MODES)}")


class RankDropout(nn.Module):
    """M ⊙ (A·x) in training, identity in eval (see the module docstring).

    Args:
        p: the probability that a rank channel is dropped, in [0, 1); 0 is plain LoRA.
        mask_mode: the shape of M: "element" (default), "sequence" or "batch" (`MASK_MODES`).
        rescale: kept channels are scaled by 1/(1 − p) (default), so E[M] = 1; False: by 1.

    Shapes: the input A·x is (..., r), e.g. (batch, tokens, r); the output has the same shape and
    dtype (the mask is drawn in that dtype).

    Raises:
        ValueError: `p` outside [0, 1) or not a number, or an unknown `mask_mode`.
    """

    def __init__(self, p: float, mask_mode: str = "element", rescale: bool = True):
        super().__init__()
        check_rank_dropout_args(p, mask_mode)
        self.p = float(p)
        self.mask_mode = mask_mode
        self.rescale = rescale
        self.dora_input = None  # on DoRA layers: weakref to the activation DoRA was called with

    def forward(self, a_x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return a_x
        if self.mask_mode == "element" and self.rescale and _fused_dropout_scales_exactly(a_x):
            # the fused kernel, and the very masks nn.Dropout would draw from the same seed
            return F.dropout(a_x, self.p, training=True)
        # the mask in the activation's dtype (0/1 is exact in any), drawn as F.dropout draws it on
        # CPU, so the masks are nn.Dropout's there too
        keep = a_x.new_empty(self.mask_shape(a_x)).bernoulli_(1 - self.p)
        if self.rescale:
            # the scale as a Python float: PyTorch multiplies bf16/fp16 by it in float32 and rounds
            # once, so kept entries are A·x/(1−p) correctly rounded. A bf16 mask holding 1/(1−p)
            # (what F.dropout on CPU does) rounds the scale itself: 1/0.7 → 1.4297, E[M] = 1.0008
            return (a_x * keep).mul_(1 / (1 - self.p))
        return a_x * keep

    def mask_shape(self, a_x: torch.Tensor) -> tuple[int, ...]:
        rank = a_x.shape[-1]
        if self.mask_mode == "element":
            return tuple(a_x.shape)
        if self.mask_mode == "sequence":
            return (a_x.shape[0],) + (1,) * (a_x.dim() - 2) + (rank,)
        return (rank,)

    def extra_repr(self) -> str:
        return f"p={self.p}, mask_mode={self.mask_mode}, rescale={self.rescale}"


def _fused_dropout_scales_exactly(a_x: torch.Tensor) -> bool:
    """Whether F.dropout scales A·x by exactly 1/(1−p): in float32/64 (where the scale is that
    float), and on CUDA/XPU, where it runs the fused kernel (scaled in float32). Elsewhere (CPU,
    MPS) in bf16/fp16 it scales by a mask holding 1/(1−p) rounded to that dtype."""
    return a_x.dtype in (torch.float32, torch.float64) or a_x.device.type in ("cuda", "xpu")


def _apply_rank_dropout(lora_a: nn.Module, inputs, a_x: torch.Tensor) -> torch.Tensor:
    rank_dropout = lora_a.rank_dropout
    if rank_dropout.dora_input is not None and inputs[0] is not rank_dropout.dora_input():
        return a_x  # DoRA's weight-norm probe lora_A(I), not an activation
    return rank_dropout(a_x)


class _TrackDoraInput:
    """Forward pre-hook on a DoRA layer: remembers the activation whose A·x is to be masked."""

    def __init__(self, rank_dropout: RankDropout):
        self.rank_dropout = rank_dropout

    def __call__(self, dora_layer: nn.Module, args) -> None:
        self.rank_dropout.dora_input = weakref.ref(args[0])


def _lora_a_modules(model: nn.Module, adapter_names: list[str] | None = None):
    """(qualified name, lora_A module, DoRA layer or None) for every LoRA layer and adapter."""
    for layer_name, layer in lora_layers(model, adapter=None):
        for adapter, lora_a in layer.lora_A.items():
            if adapter_names is None or adapter in adapter_names:
                dora = layer.lora_magnitude_vector[adapter] if layer.use_dora.get(adapter) else None
                yield f"{layer_name}.lora_A.{adapter}", lora_a, dora


def install_rank_dropout(
    model: nn.Module,
    p: float,
    mask_mode: str = "element",
    rescale: bool = True,
    adapter_names: list[str] | None = None,
) -> list[str]:
    """Put rank dropout on every LoRA layer of a PEFT model (re-configuring any already there).

    Works on any PEFT LoRA model (nn.Linear, DoRA, bitsandbytes layers: all of them call
    `lora_A`). Nothing is added to the state dict: the saved adapter is plain PEFT LoRA.

    Args:
        model: a PEFT model (`peft.get_peft_model(model, LoraConfig(...))`) or a module holding
            PEFT LoRA layers.
        p: the probability that a rank channel is dropped, in [0, 1) (the paper recommends 0.3).
        mask_mode: "element" (default: `nn.Dropout(p)` on A·x, the authors' code), "sequence"
            or "batch"; see the module docstring.
        rescale: scale kept channels by 1/(1 − p) (default True).
        adapter_names: only these adapters' layers (default: every adapter).

    Returns:
        The names of the `lora_A` modules it hooked, e.g. "...q_proj.lora_A.default".

    Raises:
        ValueError: a bad `p` or `mask_mode`, or no LoRA layer (for `adapter_names`) in `model`.
    """
    check_rank_dropout_args(p, mask_mode)
    targets = list(_lora_a_modules(model, adapter_names))
    if not targets:
        raise ValueError(
            f"rank dropout needs a PEFT LoRA model, but {type(model).__name__} has no LoRA layer"
            + (f" for adapter(s) {adapter_names}" if adapter_names else "")
            + ": wrap it first with peft.get_peft_model(model, LoraConfig(...))"
        )
    for _, lora_a, dora in targets:
        _uninstall(lora_a, dora)
        lora_a.rank_dropout = RankDropout(p, mask_mode, rescale).train(lora_a.training)
        lora_a.register_forward_hook(_apply_rank_dropout)
        if dora is not None:
            dora.register_forward_pre_hook(_TrackDoraInput(lora_a.rank_dropout))
    return [name for name, _, _ in targets]


def remove_rank_dropout(model: nn.Module) -> int:
    """Take rank dropout off every LoRA layer of `model`.

    Returns:
        How many `lora_A` modules it was removed from (0 if there was none).
    """
    removed = 0
    for _, lora_a, dora in _lora_a_modules(model):
        removed += _uninstall(lora_a, dora)
    return removed


def installed_rank_dropout(model: nn.Module) -> dict[str, RankDropout]:
    """The rank dropout modules on `model`, by the name of the `lora_A` module they act on."""
    return {
        name: lora_a.rank_dropout
        for name, lora_a, _ in _lora_a_modules(model)
        if isinstance(getattr(lora_a, "rank_dropout", None), RankDropout)
    }


def _uninstall(lora_a: nn.Module, dora: nn.Module | None) -> bool:
    if not isinstance(getattr(lora_a, "rank_dropout", None), RankDropout):
        return False
    # found by identity rather than through stored handles, which a deepcopy would leave
    # pointing at the original module's hooks
    for hook_id, hook in list(lora_a._forward_hooks.items()):
        if hook is _apply_rank_dropout:
            del lora_a._forward_hooks[hook_id]
    for hook_id, hook in list(dora._forward_pre_hooks.items()) if dora is not None else []:
        if isinstance(hook, _TrackDoraInput):
            del dora._forward_pre_hooks[hook_id]
    del lora_a.rank_dropout
    return True
