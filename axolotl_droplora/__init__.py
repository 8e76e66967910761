"""DropLoRA (rank dropout between LoRA's A and B) and MiLoRA for Axolotl, PEFT and TRL."""

from .method.conversion import convert_adapter_dir, fold_into_original_base, snapshot_initial_adapter
from .method.milora import init_milora
from .method.rank_dropout import (
    MASK_MODES,
    RankDropout,
    install_rank_dropout,
    installed_rank_dropout,
    remove_rank_dropout,
)
from .trainer_callback import DropLoRACallback

__all__ = [
    "MASK_MODES",
    "DropLoRAArgs",
    "DropLoRACallback",
    "DropLoRAPlugin",
    "RankDropout",
    "convert_adapter_dir",
    "fold_into_original_base",
    "init_milora",
    "install_rank_dropout",
    "installed_rank_dropout",
    "remove_rank_dropout",
    "snapshot_initial_adapter",
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
