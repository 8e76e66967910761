"""Axolotl plugin: registers `adapter: droplora` and puts rank dropout on the LoRA model.

Axolotl builds the adapter with its own LoRA loader (the adapter is declared `lora_like`), so
every `lora_*` / `peft_*` key keeps its meaning; this plugin only answers hooks.
"""

from __future__ import annotations

from axolotl.integrations.base import AdapterCapabilities, BasePlugin
from axolotl.utils.dict import DictDefault
from axolotl.utils.logging import get_logger

from .args import ADAPTER, DEFAULT_RANK_DROPOUT
from .rank_dropout import install_rank_dropout, installed_rank_dropout

LOG = get_logger(__name__)

# Axolotl hands TRL only the LoRA config for these; TRL builds the PEFT model inside its trainer.
RL_CONFIG_ONLY = ("dpo", "ipo", "kto")


def rank_dropout_settings(cfg: DictDefault) -> dict:
    """install_rank_dropout's keyword arguments from the YAML, defaults filled in."""
    return {
        "p": DEFAULT_RANK_DROPOUT if cfg.droplora_rank_dropout is None else cfg.droplora_rank_dropout,
        "mask_mode": cfg.droplora_mask_mode or "element",
        "rescale": True if cfg.droplora_rescale is None else cfg.droplora_rescale,
    }


class DropLoRAPlugin(BasePlugin):
    """`plugins: [axolotl_droplora.DropLoRAPlugin]` + `adapter: droplora`."""

    def get_input_args(self) -> str:
        return "axolotl_droplora.args.DropLoRAArgs"

    def get_adapter_capabilities(self) -> list[AdapterCapabilities]:
        return [AdapterCapabilities(name=ADAPTER, lora_like=True)]

    def pre_model_load(self, cfg: DictDefault):
        if cfg.adapter != ADAPTER:
            return
        if cfg.sample_packing and rank_dropout_settings(cfg)["mask_mode"] == "sequence":
            LOG.warning(
                "droplora_mask_mode: sequence with sample_packing: true draws one mask per "
                "packed row, shared by every sequence packed into it"
            )

    def post_lora_load(self, cfg: DictDefault, model):
        if cfg.adapter != ADAPTER:
            return
        if cfg.inference or cfg.merge_lora:
            LOG.info("DropLoRA: inference/merge, so no rank dropout (the model is plain LoRA)")
            return
        if cfg.rl in RL_CONFIG_ONLY:
            rl = getattr(cfg.rl, "value", cfg.rl)
            LOG.info(f"DropLoRA: rl: {rl}, so rank dropout goes on the model TRL builds")
            return
        self._install(cfg, model)

    def post_trainer_create(self, cfg: DictDefault, trainer):
        if cfg.adapter == ADAPTER and not installed_rank_dropout(trainer.model):
            self._install(cfg, trainer.model)

    @staticmethod
    def _install(cfg: DictDefault, model):
        settings = rank_dropout_settings(cfg)
        hooked = install_rank_dropout(model, **settings)
        LOG.info(
            f"DropLoRA: rank dropout p={settings['p']} mask_mode={settings['mask_mode']} "
            f"rescale={settings['rescale']} on {len(hooked)} LoRA layers"
        )
