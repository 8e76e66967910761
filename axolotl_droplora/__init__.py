"""DropLoRA (rank dropout between LoRA's A and B) for Axolotl, PEFT and TRL."""

from .rank_dropout import (
    MASK_MODES,
    RankDropout,
    install_rank_dropout,
    installed_rank_dropout,
    remove_rank_dropout,
)

__all__ = [
    "MASK_MODES",
    "DropLoRAArgs",
    "DropLoRAPlugin",
    "RankDropout",
    "install_rank_dropout",
    "installed_rank_dropout",
    "remove_rank_dropout",
]


def __getattr__(name):
    # Axolotl is imported only when its plugin is asked for, so PEFT/TRL users need not have it.
    if name == "DropLoRAPlugin":
        from .plugin import DropLoRAPlugin

        return DropLoRAPlugin
    if name == "DropLoRAArgs":
        from .args import DropLoRAArgs

        return DropLoRAArgs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
