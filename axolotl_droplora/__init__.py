"""DropLoRA (rank dropout between LoRA's A and B) and MiLoRA for Axolotl, PEFT and TRL."""

from . import method
from .method import (
    MASK_MODES,
    RankDropout,
    convert_adapter_dir,
    fold_into_original_base,
    init_milora,
    install_rank_dropout,
    installed_rank_dropout,
    remove_rank_dropout,
    snapshot_initial_adapter,
)
from .trainer_callback import DropLoRACallback

__all__ = [*method.__all__, "DropLoRAArgs", "DropLoRACallback", "DropLoRAPlugin"]


def __getattr__(name):
    # Axolotl is imported only when its plugin is asked for, so PEFT/TRL users need not have it.
    if name == "DropLoRAPlugin":
        from .plugin import DropLoRAPlugin

        return DropLoRAPlugin
    if name == "DropLoRAArgs":
        from .args import DropLoRAArgs

        return DropLoRAArgs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
