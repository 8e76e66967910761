"""The method: rank dropout between LoRA's A and B, MiLoRA's init, and the conversion of an SVD
init's adapter for the original base. torch and peft only; nothing here knows Axolotl or TRL."""

from .conversion import convert_adapter_dir, fold_into_original_base, snapshot_initial_adapter
from .milora import init_milora
from .rank_dropout import MASK_MODES, RankDropout, install_rank_dropout, installed_rank_dropout, remove_rank_dropout

__all__ = [
    "MASK_MODES",
    "RankDropout",
    "convert_adapter_dir",
    "fold_into_original_base",
    "init_milora",
    "install_rank_dropout",
    "installed_rank_dropout",
    "remove_rank_dropout",
    "snapshot_initial_adapter",
]
