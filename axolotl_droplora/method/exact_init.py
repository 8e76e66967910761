"""The exact mode of an SVD init (`svd_init_exact: true`): keep W, subtract s·B0·A0 in the forward.

MiLoRA's usual residual base W_p = W − s·B0·A0 is stored in the base weight's dtype. In bfloat16
that rounding loses most of the minor components: an entry of s·B0·A0 below half a bf16 ulp of
W leaves W unchanged, so the rounded W_p + s·B0·A0 is W plus (most of) the minor components, and
the model no longer starts from the base (README, "bf16 and SVD inits", has the figures).

The exact mode leaves W untouched and moves the subtraction into the forward, as a frozen
low-rank term inside LoRA's own sum:

    h = W·x + s·(B·A·dropout(x) − B0·A0·x)

PEFT adds the LoRA path to the base output in the adapter's dtype (float32 unless the model was
cast after PEFT built it) and then casts back. At step 0, A = A0 and B = B0, so both products
are computed by the same kernels from the same values: the bracket is exactly 0 and h is the
base layer's output, bit for bit, in any dtype and under autocast. Then it trains the same
function as W_p·x + s·B·A·dropout(x), with the same gradients.

The cost per targeted layer: A0, B0 held as non-persistent buffers (r·(d_in + d_out) values,
as many as the adapter, in its dtype; not in any state dict, so saves are unchanged), and two
rank-r matmuls more in the forward and in the backward. The saved adapter converted for the
original base ([A; A0], [B, −B0]) is then valid on exactly the weights the model trained with.

Not for DoRA (its weight norm reads the base weight, which would have to be W_p) nor PiSSA
(PEFT's init has already rounded W_p into the base weight before this package sees the model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KEY = "svd_init_exact"  # the recipe key; named in errors so that the fix is findable


class InitialTerm(nn.Module):
    """−B0·A0·x, added to LoRA's lora_B output before PEFT scales it by s (see module docstring).

    Registered as a child of the LoRA layer (so `.to()` and `print(model)` reach it); A0 and B0 are
    non-persistent buffers, so neither the adapter's nor the model's state dict holds them.
    """

    def __init__(self, lora_a: torch.Tensor, lora_b: torch.Tensor):
        super().__init__()
        self.register_buffer("initial_a", lora_a.detach().clone(), persistent=False)
        self.register_buffer("initial_b", lora_b.detach().clone(), persistent=False)
        self.inputs: list[torch.Tensor] = []  # x as PEFT feeds the adapter, until lora_B runs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the very ops PEFT's lora_A/lora_B run (F.linear, no bias), so at A = A0, B = B0 the
        # difference is exactly zero, also under autocast
        return F.linear(F.linear(x, self.initial_a.to(x.dtype)), self.initial_b.to(x.dtype))

    # hooks as bound methods: a deepcopy of the model re-binds them to the copy's own term
    def capture_input(self, dropout: nn.Module, args) -> None:
        """Pre-hook on lora_dropout[adapter]: it gets x already cast to the adapter's dtype and
        before the dropout, the x of W·x, which the frozen term must see (it is the base's)."""
        self.inputs.append(args[0])

    def subtract(self, lora_b: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        """Hook on lora_B[adapter]: its output minus B0·A0·x, before PEFT multiplies by s."""
        if not self.inputs:
            raise RuntimeError(
                f"{KEY}: lora_B ran without its layer's input (called outside the "
                f"LoRA layer's forward?): the frozen term −s·B0·A0·x cannot be added"
            )
        return output - self(self.inputs.pop()).to(output.dtype)

    def extra_repr(self) -> str:
        return f"r={self.initial_a.shape[0]}, frozen A0/B0 subtracted in the forward ({KEY})"


def _refuse_merged(layer: nn.Module, args) -> None:
    if getattr(layer, "merged", False) and not getattr(layer, "disable_adapters", False):
        # a merged layer skips the LoRA path, so W + s·B·A would run without −s·B0·A0
        raise RuntimeError(
            f"{KEY}: this LoRA layer was merged while the frozen term −s·B0·A0 is "
            f"active, so the merged weight misses it. Unmerge, or merge only after "
            f"training (the saved adapter is converted for the original base)"
        )


def check_supported(layer: nn.Module, adapter: str) -> None:
    """Raise ValueError naming the key if the exact mode cannot run on this LoRA layer (DoRA:
    it normalises by the norm of the base weight plus s·B·A, which would have to be W_p)."""
    if layer.use_dora.get(adapter):
        raise ValueError(
            f"{KEY}: true does not support DoRA (use_dora / peft_use_dora): DoRA "
            f"normalises by the norm of the base weight plus s·B·A, which would have "
            f"to be W_p. Remove {KEY} (the residual base is then rounded to the "
            f"weights' dtype) or train without DoRA"
        )


def install_initial_term(layer: nn.Module, adapter: str) -> InitialTerm:
    """Freeze the layer's current A, B as A0, B0 and subtract s·B0·A0·x in its forward.

    Args:
        layer: a PEFT LoRA `Linear` layer holding `adapter`.
        adapter: the adapter name ("default").
    Raises:
        ValueError: for a DoRA layer (check_supported).
    """
    check_supported(layer, adapter)
    remove_initial_term(layer)
    lora_a, lora_b = layer.lora_A[adapter], layer.lora_B[adapter]
    term = InitialTerm(lora_a.weight, lora_b.weight)
    layer.svd_init_initial_term = term
    layer.lora_dropout[adapter].register_forward_pre_hook(term.capture_input)
    lora_b.register_forward_hook(term.subtract)
    layer.register_forward_pre_hook(_refuse_merged)
    return term


def initial_term(layer: nn.Module) -> InitialTerm | None:
    """The layer's frozen term, or None (no exact mode on it)."""
    return getattr(layer, "svd_init_initial_term", None)


def remove_initial_term(layer: nn.Module) -> bool:
    """Take the frozen term off the layer; True if there was one."""
    term = initial_term(layer)
    if term is None:
        return False
    # found by identity, not through stored handles, which a deepcopy would leave pointing at
    # the original module's hooks (as rank_dropout.py does)
    for module in layer.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for hook_id, hook in list(hooks.items()):
                if getattr(hook, "__self__", None) is term or hook is _refuse_merged:
                    del hooks[hook_id]
    del layer.svd_init_initial_term
    return True
