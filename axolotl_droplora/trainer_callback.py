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
  (see method/conversion.py), so
  checkpoints and `trainer.save_model()` are plain PEFT LoRA adapters for the base you started from.
  Each converted checkpoint also keeps the adapter as trained in its `default/` subfolder, which
  the Trainer loads when resuming (`resume_from_checkpoint`); the init runs again on the fresh
  model and is checked against the checkpoint's A0, B0, so the run goes on exactly where it was.
"""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path

from transformers import TrainerCallback

from .method.conversion import (
    convert_adapter_dir,
    fold_into_original_base,
    initial_adapter_of,
    is_partitioned,
    snapshot_initial_adapter,
)
from .method.lora_layers import is_svd_init, lora_layers
from .method.milora import META_WEIGHTS_REASON, init_milora, loads_weights_on_rank_0_only
from .method.rank_dropout import check_rank_dropout_args, install_rank_dropout
from .model_card import Card, Method, attach

LOG = logging.getLogger(__name__)
SAVE_BASES = ("original", "residual")
# the subfolder of a converted checkpoint holding the adapter as trained, named after the PEFT
# adapter so that the Trainer loads it into that adapter when resuming (see method/conversion.py)
ACTIVE_ADAPTER = "default"  # the adapter that trains: PEFT's default name, as TRL and Axolotl use
RESUME_ADAPTER = ACTIVE_ADAPTER
# TRL's DPO, KTO, GRPO and RLOO trainers compute the reference with this adapter when the model
# has one, and with the adapter disabled otherwise
REFERENCE_ADAPTER = "ref"


class DropLoRACallback(TrainerCallback):
    """DropLoRA and MiLoRA for any transformers Trainer (TRL's SFTTrainer, DPOTrainer, …) on a PEFT
    LoRA model; the Axolotl plugin uses this same callback, so both routes run one code path.

    At the start of training it installs rank dropout (method/rank_dropout.py) and runs MiLoRA's
    init (method/milora.py); at every save after MiLoRA or PEFT's PiSSA it converts the adapter
    for the original base (method/conversion.py) and writes the model card.

    Args:
        rank_dropout: p in [0, 1), the chance that a rank channel is dropped in a training step
            (default 0.3, the paper's); None: no rank dropout.
        mask_mode: the mask's shape: "element" (default, the authors' nn.Dropout), "sequence" or
            "batch" (`MASK_MODES`).
        rescale: scale kept channels by 1/(1 − p) (default True).
        milora: initialise A, B from the r smallest singular triplets of each targeted weight and
            keep the rest as the frozen residual base (build the model with a standard LoraConfig).
        save_base: after MiLoRA or PiSSA, "original" (default) saves rank-2r adapters valid on
            the original base; "residual" saves them as trained, valid only on W_p.
        reference_adapter: for TRL's preference trainers after an SVD init: add a frozen `ref`
            adapter holding A0, B0, so the reference model is the starting model.
        exact_init: (`svd_init_exact`, MiLoRA only) keep W as the base weight and subtract
            s·B0·A0 in the forward (method/exact_init.py), so a bf16 model starts from the base
            exactly.

    Raises:
        ValueError: when made, a bad `rank_dropout`, `mask_mode` or `save_base`, or `exact_init`
            without `milora`; when training starts, a model without LoRA layers, an SVD init under
            FSDP's cpu_ram_efficient_loading, or converted saves with `load_best_model_at_end`.
        RuntimeError: when training starts, an SVD init's adapter changed before the first step;
            on resume, a checkpoint trained from another SVD init.
    """

    def __init__(
        self,
        rank_dropout: float | None = 0.3,
        mask_mode: str = "element",
        rescale: bool = True,
        milora: bool = False,
        save_base: str = "original",
        reference_adapter: bool = False,
        exact_init: bool = False,
    ):
        if rank_dropout is not None:
            check_rank_dropout_args(rank_dropout, mask_mode)
        if save_base not in SAVE_BASES:
            raise ValueError(f"save_base must be one of {', '.join(SAVE_BASES)}, got {save_base!r}")
        if exact_init and not milora:
            # PEFT's PiSSA has rounded W_p into the base weight before a callback sees the model
            raise ValueError(
                "exact_init (svd_init_exact) needs milora=True (peft_init_lora_weights: "
                "milora): PEFT's PiSSA init writes the rounded W_p into the base weights "
                "before the callback sees the model, so W is no longer there to keep"
            )
        self.exact_init = exact_init
        self.rank_dropout, self.mask_mode, self.rescale = rank_dropout, mask_mode, rescale
        self.milora, self.save_base = milora, save_base
        self.reference_adapter = reference_adapter
        self.initial_adapter = None  # A0, B0 once MiLoRA has run and saves must be converted
        # the plugin sets `method` from the recipe, naming the settings left to defaults
        self.method: Method | None = None
        self.card: Card | None = None  # what every save's README.md says (model_card.py)
        self._prepared = False

    def prepare(self, model) -> None:
        """MiLoRA init and rank dropout on `model`, once; safe to call again."""
        if self._prepared:
            return
        if self.milora:
            init_milora(model, exact=self.exact_init)
        residual_init = "MiLoRA" if self.milora else "PiSSA" if _is_pissa(model) else None
        if residual_init and self.save_base == "original":
            self.initial_adapter = snapshot_initial_adapter(model)
            LOG.info(f"{residual_init}: saved adapters will be converted to rank 2r on the original base")
        elif residual_init == "PiSSA":
            LOG.warning(
                "PiSSA: saving the residual form: the adapter keeps init_lora_weights 'pissa', so PEFT "
                "rebuilds the residual base W_p when it loads it; vLLM refuses it"
            )
        elif residual_init:
            LOG.warning(
                f"{residual_init}: saving the residual form: the adapter is valid only on "
                f"the residual base W_p, not on the original model"
            )
        if residual_init and self.reference_adapter and not self.exact_init:
            # after an SVD init the adapter-disabled model is W_p, not the starting model W: a
            # frozen copy of A0, B0 makes the reference W_p + s·B0·A0 = W. With exact_init the
            # base weight is W itself, so the adapter-disabled model is already the reference
            _add_reference_adapter(model, snapshot_initial_adapter(model))
            LOG.info(
                f"{residual_init}: preference training uses a frozen '{REFERENCE_ADAPTER}' adapter "
                f"holding the initial A0, B0 as its reference (the starting model)"
            )
        if self.rank_dropout is not None:
            hooked = install_rank_dropout(
                model, self.rank_dropout, self.mask_mode, self.rescale, adapter_names=[ACTIVE_ADAPTER]
            )
            kinds = sorted({type(layer).__name__ for _, layer in lora_layers(model, adapter=None)})
            LOG.info(
                f"DropLoRA: rank dropout p={self.rank_dropout} mask_mode={self.mask_mode} "
                f"rescale={self.rescale} on {len(hooked)} LoRA layers ({', '.join(kinds)})"
            )
        # before any save: the adapter's r here is the trained r, whatever conversion follows
        self.card = Card.of(self.method or self._method(model), model)
        attach(model, self.card)
        self._prepared = True

    def _method(self, model) -> Method:
        init = str(model.peft_config[ACTIVE_ADAPTER].init_lora_weights) if _is_pissa(model) else None
        return Method(
            self.rank_dropout,
            self.mask_mode,
            self.rescale,
            "milora" if self.milora else init,
            self.save_base,
            exact_init=self.exact_init,
        )

    def on_init_end(self, args, state, control, model=None, **kwargs):
        self._check_weights_are_loaded(args, model)
        self.prepare(model)
        self._check(args)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._check_weights_are_loaded(args, model)
        self.prepare(model)
        self._check(args)
        if state.global_step == 0:
            self._check_init_survived(model)
        else:  # resumed: the Trainer loaded the residual adapter kept in the checkpoint
            self._check_same_init_as(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    def _check_weights_are_loaded(self, args, model) -> None:
        """Refuse an SVD init that would read empty weights, on every rank alike (the init
        itself would fail only off rank 0, and leave rank 0 waiting)."""
        if self._prepared or not (self.milora or _is_pissa(model)):
            return
        if loads_weights_on_rank_0_only(getattr(args, "fsdp_config", None)):
            init = "MiLoRA" if self.milora else "PiSSA"
            raise ValueError(
                f"{init} with fsdp_config['cpu_ram_efficient_loading'] = True: {META_WEIGHTS_REASON}. "
                f"Set it to False in fsdp_config for an SVD init."
            )

    def _check(self, args) -> None:
        if self.initial_adapter is not None and args.load_best_model_at_end:
            raise ValueError(
                "load_best_model_at_end cannot be used with MiLoRA/PiSSA saves converted for the "
                "original base: the Trainer reloads the best checkpoint's top-level adapter, which "
                "is rank 2r for the original base, into the rank-r model training on the residual "
                "base. Turn it off and pick the best checkpoint folder yourself (each is a plain "
                "LoRA for the original base), or use save_base='residual' (svd_init_save_base)."
            )

    def _check_init_survived(self, model) -> None:
        """Stop if anything re-initialised the adapter between MiLoRA/PiSSA and training.

        The saves are converted with the A0, B0 taken at init; if a loader re-draws A or B
        after that (Axolotl >= 0.20 re-draws lora_A after its post_lora_load hook), the model
        no longer starts from W and every converted save would be silently wrong.
        """
        if self.initial_adapter is None or model is None:
            return
        now = snapshot_initial_adapter(model)
        changed = [
            key
            for key, initial in self.initial_adapter.items()
            if key in now
            # relative, so that a bf16 cast by DeepSpeed does not count as a change
            and (now[key].float() - initial.float()).norm() > 0.05 * initial.float().norm()
        ]
        if changed:
            raise RuntimeError(
                f"{len(changed)} LoRA weights changed between the SVD init and the start of "
                f"training (first: {changed[0]}): something re-initialised the adapter after "
                f"the init, so the model no longer starts from the base model's weights and "
                f"converted saves would be wrong. Report this with your Axolotl/PEFT versions."
            )

    def _check_same_init_as(self, checkpoint: Path) -> None:
        """On resume, the residual base just rebuilt must be the one the checkpoint trained on."""
        if self.initial_adapter is None or not (checkpoint / RESUME_ADAPTER).is_dir():
            return
        saved = initial_adapter_of(checkpoint)
        differs = [
            key
            for key, value in self.initial_adapter.items()
            if (saved[key].float() - value.float()).norm() > 1e-4 * value.float().norm()
        ]
        if differs:
            raise RuntimeError(
                f"resuming from {checkpoint}: the SVD init of this run differs from the one the "
                f"checkpoint was trained from ({len(differs)} tensors, first {differs[0]}), so the "
                f"residual base differs too. Resume with the same base model, targets, r, "
                f"lora_alpha and init (for pissa_niter_N, the same seed)."
            )
        LOG.info(f"resuming from {checkpoint}: same SVD init, residual adapter loaded from {RESUME_ADAPTER}/")

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.initial_adapter is not None and state.is_world_process_zero and checkpoint.is_dir():
            convert_adapter_dir(checkpoint, self.initial_adapter, keep_trained_as=RESUME_ADAPTER)
        # the reference is rebuilt from the init on resume; a saved copy would only mislead
        shutil.rmtree(checkpoint / REFERENCE_ADAPTER, ignore_errors=True)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is not None and REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
            model.delete_adapter(REFERENCE_ADAPTER)  # not part of what was trained
        if self.initial_adapter is not None and _is_partitioned(model):
            # ZeRO-3 partitions and FSDP2 shards hold parameters of fixed shapes, so the rank
            # cannot double in memory: the saves that follow are converted as files instead
            _convert_each_save(model, self.initial_adapter)
            self.initial_adapter = None
            LOG.info("adapter saves after training are converted to rank 2r on the original base")
        elif self.initial_adapter is not None:
            fold_into_original_base(model, self.initial_adapter)
            self.initial_adapter = None
            LOG.info("adapter converted to rank 2r on the original base for saving")


def _add_reference_adapter(model, initial: dict) -> None:
    from peft import set_peft_model_state_dict

    config = copy.deepcopy(model.peft_config[ACTIVE_ADAPTER])
    config.init_lora_weights, config.lora_dropout = True, 0.0  # no second SVD; a fixed reference
    model.add_adapter(REFERENCE_ADAPTER, config)
    loaded = set_peft_model_state_dict(model, initial, adapter_name=REFERENCE_ADAPTER)
    missing = [key for key in loaded.missing_keys if f".{REFERENCE_ADAPTER}" in key]
    if missing:
        raise RuntimeError(f"reference adapter: {len(missing)} tensors not set, first {missing[0]}")
    for name, parameter in model.named_parameters():
        if f".{REFERENCE_ADAPTER}." in name:
            parameter.requires_grad_(False)
    model.set_adapter(ACTIVE_ADAPTER)


def _is_partitioned(model) -> bool:
    """LoRA weights partitioned by DeepSpeed ZeRO-3 (`ds_id`) or sharded by FSDP2 (DTensor)."""
    return any(is_partitioned(p) for name, p in model.named_parameters() if ".lora_" in name)


def _convert_each_save(model, initial: dict) -> None:
    """Make every later save of the adapter write it converted for the original base.

    Hooked on the adapter's config, not on `model.save_pretrained`: whoever writes an adapter
    folder writes the weights, then the config with `peft_config[name].save_pretrained`, on the
    main process only. That is PEFT's `save_pretrained` (what the Trainer's save_model calls, with
    the engine's gathered state dict), and also Axolotl 0.21's final save under FSDP2
    (`save_fsdp2_lora_adapter`), which gathers the LoRA tensors and writes the files itself,
    never calling the model's save_pretrained.
    """
    config = model.peft_config[ACTIVE_ADAPTER]
    save_config = config.save_pretrained

    def save_pretrained(save_directory, *args, **kwargs):
        save_config(save_directory, *args, **kwargs)
        convert_adapter_dir(save_directory, initial)

    config.save_pretrained = save_pretrained


def _is_pissa(model) -> bool:
    """PEFT's PiSSA init (`init_lora_weights="pissa"` / `"pissa_niter_N"`) also moves s·B0·A0 out of W."""
    config = getattr(model, "peft_config", {}).get("default")
    return is_svd_init(getattr(config, "init_lora_weights", None))  # MiLoRA's config says True
