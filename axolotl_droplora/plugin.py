"""Axolotl plugin: `adapter: droplora`, `peft_init_lora_weights: milora`, PiSSA saves.

Axolotl builds the adapter with its own LoRA loader (droplora is declared `lora_like`), so every
`lora_*` / `peft_*` key keeps its meaning. The plugin answers hooks and hands the work to the
same DropLoRACallback that TRL users put on their trainer.
"""

from __future__ import annotations

import logging

from axolotl.integrations.base import AdapterCapabilities, BasePlugin
from axolotl.utils.dict import DictDefault
from axolotl.utils.logging import get_logger

from .args import ADAPTER, MILORA, SEQUENCE_MASK_WITH_PACKING, asks_for_rank_dropout, svd_init
from .method.lora_layers import lora_layers
from .model_card import Method, attach_to_trainer
from .trainer_callback import DropLoRACallback

LOG = get_logger(__name__)


def callback_for(cfg: DictDefault) -> DropLoRACallback | None:
    """The DropLoRACallback a recipe asks for, defaults filled in; None for a plain recipe."""
    method = Method.from_recipe(cfg)
    if method is None:
        return None
    callback = DropLoRACallback(
        rank_dropout=method.rank_dropout,
        mask_mode=method.mask_mode,
        rescale=method.rescale,
        milora=method.init == MILORA,
        save_base=method.save_base,
        exact_init=method.exact_init,
        # rl: dpo/ipo/kto/grpo…: TRL's reference must be the starting model, not W_p
        reference_adapter=bool(cfg.rl),
    )
    callback.method = method  # the model card names the settings left to defaults
    return callback


class DropLoRAPlugin(BasePlugin):
    """`plugins: [axolotl_droplora.DropLoRAPlugin]`, then `adapter: droplora` and/or MiLoRA."""

    def __init__(self):
        super().__init__()
        self.callback: DropLoRACallback | None = None
        self._zero3_config = None

    def register(self, cfg: dict):
        # Axolotl prints INFO only from loggers it set a level on; the callback's logger is a
        # plain one (it serves TRL users too), so give the package logger that level here
        logging.getLogger("axolotl_droplora").setLevel(logging.INFO)

    def get_input_args(self) -> str:
        return "axolotl_droplora.args.DropLoRAArgs"

    def get_adapter_capabilities(self) -> list[AdapterCapabilities]:
        return [AdapterCapabilities(name=ADAPTER, lora_like=True)]

    def get_lora_config_kwargs(self, cfg: DictDefault) -> dict:
        # PEFT has no "milora" init and would raise: build a standard LoRA, re-initialised after
        if cfg.peft_init_lora_weights == MILORA:
            return {"init_lora_weights": True}
        return {}

    def pre_model_load(self, cfg: DictDefault):
        if asks_for_rank_dropout(cfg) and cfg.sample_packing and cfg.droplora_mask_mode == "sequence":
            LOG.warning(SEQUENCE_MASK_WITH_PACKING)

    def pre_lora_load(self, cfg: DictDefault, model):
        # transformers knows ZeRO-3 is on only while a DeepSpeed config object is alive (it keeps
        # a weak reference), and Axolotl keeps one only while from_pretrained runs (a local in
        # its model loader). PEFT builds the LoRA model after that, so its SVD inits (PiSSA)
        # would see ZeRO-3 as off, skip their gather (gather_params_ctx) and decompose the empty
        # partitions. A live config until the trainer's arguments hold theirs is how
        # transformers asks code outside the Trainer to use ZeRO-3 (HfDeepSpeedConfig).
        if svd_init(cfg) and cfg.deepspeed:
            from transformers.integrations import HfDeepSpeedConfig

            config = HfDeepSpeedConfig(cfg.deepspeed)
            self._zero3_config = config if config.is_zero3() else None

    def post_model_load(self, cfg: DictDefault, model):
        if cfg.inference or cfg.merge_lora:
            return  # a trained adapter is loaded: plain LoRA, nothing to add
        self.callback = callback_for(cfg)
        # The last hook before the trainer exists, so MiLoRA's weights are what DeepSpeed/FSDP
        # copy. Not post_lora_load: from Axolotl 0.20 on, the loader re-draws every lora_A from
        # the seed right after that hook (when init_lora_weights is True), which would undo
        # MiLoRA. For rl: dpo/ipo/kto the model here has no LoRA yet (TRL builds it), so this
        # waits for the trainer (on_train_begin).
        if self.callback and _has_lora(model):
            self.callback.prepare(model)
        elif self.callback:
            LOG.info(
                f"DropLoRA: rl: {getattr(cfg.rl, 'value', cfg.rl)} builds the LoRA model in "
                f"TRL's trainer; the plugin's callback prepares it when training starts"
            )

    def post_trainer_create(self, cfg: DictDefault, trainer):
        self._zero3_config = None  # the trainer's arguments hold their own now
        # Axolotl writes the final README.md (and push_to_hub the pushed one) with the trainer's
        # create_model_card; TRL's trainers (rl: dpo…) write theirs without PEFT's card, so the
        # section is added after it, whichever trainer it is
        if not (cfg.inference or cfg.merge_lora):
            attach_to_trainer(trainer, lambda: self.callback.card if self.callback else None)

    def add_callbacks_post_trainer(self, cfg: DictDefault, trainer):
        if cfg.inference or cfg.merge_lora:
            return []
        callback = self.callback or callback_for(cfg)
        return [callback] if callback else []


def _has_lora(model) -> bool:
    return next(lora_layers(model, adapter=None), None) is not None
