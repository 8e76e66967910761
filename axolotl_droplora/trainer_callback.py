"""DropLoRA and MiLoRA for any transformers Trainer: TRL's SFTTrainer, DPOTrainer, Axolotl's.

    trainer = SFTTrainer(model, args=SFTConfig(...), train_dataset=data,
                         peft_config=LoraConfig(r=32, lora_alpha=64, target_modules=[...]),
                         callbacks=[DropLoRACallback(rank_dropout=0.3)])

A TrainerCallback, because TRL builds the PEFT model itself (`get_peft_model` inside the
trainer's __init__) and callbacks are how a Trainer lets outside code act on that model:

- end of the trainer's __init__ (or start of training, for callbacks added later): MiLoRA init
  if asked (before any distributed wrapping copies the weights), then rank dropout on every
  LoRA layer. `model.train()` / `model.eval()` switch the rank dropout, so `trainer.evaluate()`
  and generation see plain LoRA.
- each checkpoint save and the end of training (MiLoRA, or PEFT's PiSSA init, unless
  `save_base="residual"`): the adapter is converted to be valid on the original base model
  (see conversion.py), so
  checkpoints and `trainer.save_model()` are plain PEFT LoRA adapters for the base you started from.
"""

from __future__ import annotations

import logging
from pathlib import Path

from peft.tuners.lora import LoraLayer
from transformers import TrainerCallback

from .conversion import convert_adapter_dir, fold_into_original_base, snapshot_initial_adapter
from .milora import init_milora
from .rank_dropout import check_rank_dropout_args, install_rank_dropout

LOG = logging.getLogger(__name__)
SAVE_BASES = ("original", "residual")


class DropLoRACallback(TrainerCallback):
    """Rank dropout (`rank_dropout=p`, None for none), MiLoRA init (`milora=True`), and saves
    converted for the original base after MiLoRA or PiSSA (`save_base="original"`)."""

    def __init__(
        self,
        rank_dropout: float | None = 0.3,
        mask_mode: str = "element",
        rescale: bool = True,
        milora: bool = False,
        save_base: str = "original",
    ):
        if rank_dropout is not None:
            check_rank_dropout_args(rank_dropout, mask_mode)
        if save_base not in SAVE_BASES:
            raise ValueError(f"save_base must be one of {', '.join(SAVE_BASES)}, got {save_base!r}")
        self.rank_dropout, self.mask_mode, self.rescale = rank_dropout, mask_mode, rescale
        self.milora, self.save_base = milora, save_base
        self.initial_adapter = None  # A0, B0 once MiLoRA has run and saves must be converted
        self._prepared = False

    def prepare(self, model) -> None:
        """MiLoRA init and rank dropout on `model`, once; safe to call again."""
        if self._prepared:
            return
        if self.milora:
            init_milora(model)
        residual_init = "MiLoRA" if self.milora else "PiSSA" if _is_pissa(model) else None
        if residual_init and self.save_base == "original":
            self.initial_adapter = snapshot_initial_adapter(model)
            LOG.info(f"{residual_init}: saved adapters will be converted to rank 2r on the original base")
        elif residual_init:
            LOG.warning(f"{residual_init}: saving the residual form: the adapter is valid only on "
                        f"the residual base W_p, not on the original model")
        if self.rank_dropout is not None:
            hooked = install_rank_dropout(model, self.rank_dropout, self.mask_mode, self.rescale)
            kinds = sorted({type(m).__name__ for m in model.modules() if isinstance(m, LoraLayer)})
            LOG.info(f"DropLoRA: rank dropout p={self.rank_dropout} mask_mode={self.mask_mode} "
                     f"rescale={self.rescale} on {len(hooked)} LoRA layers ({', '.join(kinds)})")
        self._prepared = True

    def on_init_end(self, args, state, control, model=None, **kwargs):
        self._check(args)
        self.prepare(model)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._check(args)
        self.prepare(model)

    def _check(self, args) -> None:
        if self.milora and self.save_base == "original" and args.load_best_model_at_end:
            raise ValueError(
                "load_best_model_at_end cannot reload MiLoRA checkpoints, which hold the adapter "
                "converted for the original base (rank 2r): turn it off, or use save_base='residual'"
            )

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.initial_adapter is not None and state.is_world_process_zero and checkpoint.is_dir():
            convert_adapter_dir(checkpoint, self.initial_adapter)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.initial_adapter is not None:
            fold_into_original_base(model, self.initial_adapter)
            self.initial_adapter = None
            LOG.info("adapter converted to rank 2r on the original base for saving")


def _is_pissa(model) -> bool:
    """PEFT's PiSSA init (`init_lora_weights="pissa"` / `"pissa_niter_N"`) also moves s·B0·A0 out of W."""
    config = getattr(model, "peft_config", {}).get("default")
    return str(getattr(config, "init_lora_weights", "")).lower().startswith("pissa")
