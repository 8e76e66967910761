"""PEFT's LoRA layers and their scale: the one place the package finds them and states the rules.

A LoRA layer computes h = W·x + s·B·A·x with A: (r, in_features), B: (out_features, r), and the
scale s = α/r, or α/√r with rsLoRA (`use_rslora`). An SVD init (MiLoRA, PEFT's PiSSA) starts A, B
from singular triplets of W and moves s·B0·A0 out of W.
"""

from __future__ import annotations

from collections.abc import Iterator

from peft.tuners.lora import LoraLayer
from torch import nn

MILORA = "milora"


def lora_layers(model: nn.Module, adapter: str | None = "default") -> Iterator[tuple[str, LoraLayer]]:
    """(qualified name, layer) of every LoRA layer of `model`, in module order.

    Args:
        model: a PEFT model, or any module holding PEFT LoRA layers.
        adapter: only the layers that carry this adapter; None: every LoRA layer.
    """
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and (adapter is None or adapter in module.lora_A):
            yield name, module


def scaling(lora_alpha: float, r: int, use_rslora: bool = False) -> float:
    """s = α/r, or α/√r with rsLoRA."""
    return lora_alpha / (r**0.5 if use_rslora else r)


def scaling_rule(use_rslora: bool = False) -> str:
    """How s is computed, as the model card and `explain` write it."""
    return "α/√r" if use_rslora else "α/r"


def alpha_for_doubled_rank(lora_alpha: float, use_rslora: bool = False) -> float:
    """The α that keeps s when r doubles (the rank-2r adapter of an SVD init): ×2, or ×√2 with rsLoRA."""
    return lora_alpha * (2**0.5 if use_rslora else 2)


def is_svd_init(init_lora_weights) -> bool:
    """Whether `init_lora_weights` (a LoraConfig's, or the `peft_init_lora_weights` key) is an SVD init that
    moves s·B0·A0 out of W: MiLoRA ("milora") or PEFT's PiSSA ("pissa", "pissa_niter_N"), case-sensitive
    as in PEFT (args.py names the value meant for a near miss such as "PiSSA")."""
    return isinstance(init_lora_weights, str) and (init_lora_weights == MILORA or init_lora_weights.startswith("pissa"))
