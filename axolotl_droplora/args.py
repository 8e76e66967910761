"""The YAML keys of the plugin, merged by Axolotl into its config schema, and their checks."""

from __future__ import annotations

import difflib
import logging
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from .method.lora_layers import MILORA, is_svd_init
from .method.milora import META_WEIGHTS_REASON, loads_weights_on_rank_0_only
from .method.rank_dropout import check_rank_dropout_args

ADAPTER = "droplora"
QLORA = "qlora"  # Axolotl quantizes the base to 4 bits only for its own adapter names
RANK_DROPOUT_KEYS = ("droplora_rank_dropout", "droplora_mask_mode", "droplora_rescale")
DEFAULT_RANK_DROPOUT = 0.3
SVD_INIT_KEYS = ("svd_init_save_base", "svd_init_exact")
# Axolotl ignores keys its schema does not know, so a typo in one of ours would train silently
# with the default: every key under these prefixes must be one of ours
OWN_KEY_PREFIXES = ("droplora_", "svd_init_")
FUSED_LORA_KERNELS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")
LOG = logging.getLogger(__name__)
SEQUENCE_MASK_WITH_PACKING = (  # the plugin logs it, `explain` lists it
    "droplora_mask_mode: sequence with sample_packing: true draws one mask per packed row, shared by "
    "every sequence packed into it"
)


def asks_for_rank_dropout(config) -> bool:
    """`adapter: droplora`, or `adapter: qlora` with droplora_* keys: Axolotl quantizes the base
    only for its own adapter names, so that is how QLoRA + DropLoRA is written."""
    adapter = config.get("adapter")
    return adapter == ADAPTER or (adapter == QLORA and any(config.get(key) is not None for key in RANK_DROPOUT_KEYS))


def svd_init(config) -> str | None:
    """The SVD init a recipe asks for (`milora`, `pissa`, `pissa_niter_N`), whose saves the
    plugin converts; None for any other `peft_init_lora_weights`."""
    init = config.get("peft_init_lora_weights")
    return init if is_svd_init(init) else None


class DropLoRAArgs(BaseModel):
    """Keys for the DropLoRA plugin (`plugins: [axolotl_droplora.DropLoRAPlugin]`)."""

    # None means "not set", so that a re-validated dump of an `adapter: lora` config does not
    # look as if the user had set these keys; the plugin fills in the defaults.
    droplora_rank_dropout: float | None = Field(
        default=None,
        json_schema_extra={
            "description": "DropLoRA pruning rate p in [0, 1): the probability that a rank "
            "channel of A·x is dropped in a training step. The paper recommends 0.3; the "
            "authors' main commonsense runs used 0.5. 0 is plain LoRA. Default 0.3."
        },
    )
    droplora_mask_mode: Literal["element", "sequence", "batch"] | None = Field(
        default=None,
        json_schema_extra={
            "description": "Shape of the mask: `element` (per token and channel, the authors' "
            "nn.Dropout), `sequence` (one per sequence), `batch` (one per forward, Eq. 2). Default element."
        },
    )
    droplora_rescale: bool | None = Field(
        default=None,
        json_schema_extra={
            "description": "Scale kept channels by 1/(1-p) in training (as nn.Dropout does); "
            "false keeps them at 1, so the train-time update is smaller in expectation. Default true."
        },
    )

    svd_init_save_base: Literal["original", "residual"] | None = Field(
        default=None,
        json_schema_extra={
            "description": "With `peft_init_lora_weights: milora` or `pissa*`: `original` (default) saves "
            "every adapter (checkpoints and final) as a rank-2r LoRA valid on the original base "
            "model; `residual` saves the adapter as trained: MiLoRA's is valid ONLY on the residual base "
            "W_p (not on the model you started from); PiSSA's keeps `init_lora_weights: pissa`, so PEFT "
            "rebuilds W_p as it loads it and vLLM refuses it."
        },
    )

    svd_init_exact: bool | None = Field(
        default=None,
        json_schema_extra={
            "description": "With `peft_init_lora_weights: milora`: true keeps the base weights W and "
            "subtracts s·B0·A0 in the forward, so a bf16 model starts from the base model exactly "
            "(bit for bit), at the cost of a frozen copy of A0, B0 and two rank-r matmuls per layer. "
            "Default false. Then the residual base W_p = W − s·B0·A0 is stored in the weights' dtype, as "
            "in the papers' code, which in bf16 rounds away most of the minor components."
        },
    )

    @field_validator("droplora_rank_dropout", mode="before")
    @classmethod
    def _p_in_range(cls, p):
        if p is None:
            return p
        try:
            check_rank_dropout_args(p, "element")
        except ValueError as err:
            raise ValueError(f"droplora_rank_dropout: {err}") from None
        return p

    @model_validator(mode="before")
    @classmethod
    def _fits_the_rest_of_the_config(cls, data):
        if not isinstance(data, dict):
            return data
        _check_own_key_names(data)
        _check_svd_init_value(data)
        adapter = data.get("adapter")
        own_keys = sorted(key for key in data if key.startswith("droplora_") and data[key] is not None)
        if own_keys and adapter not in (ADAPTER, QLORA):
            raise ValueError(
                f"{', '.join(own_keys)} set, but `adapter: {adapter}` does not use "
                f"{'it' if len(own_keys) == 1 else 'them'}: set `adapter: {ADAPTER}` (or `adapter: "
                f"{QLORA}` on a 4-bit base) to train with rank dropout, or remove {', '.join(own_keys)}"
            )
        init = svd_init(data)
        if init == MILORA:
            _check_milora(data)
        if init:
            _check_whole_weights(data, init)
            _check_converted_saves(data)
        _check_exact(data, init)
        if not init and data.get("svd_init_save_base") is not None:
            raise ValueError(
                "svd_init_save_base is set, but neither MiLoRA nor PiSSA is: add "
                "`peft_init_lora_weights: milora` (or pissa), or remove svd_init_save_base"
            )
        if adapter == QLORA and asks_for_rank_dropout(data):
            # Axolotl switches its fused kernels on for qlora by itself (its validators run
            # before this one, so a true here may not be the user's): they must be off
            switched = [key for key in FUSED_LORA_KERNELS if data.get(key)]
            for key in switched:
                data[key] = False
            if switched:
                LOG.warning(
                    f"DropLoRA on adapter: {QLORA}: {', '.join(switched)} set to false: the "
                    f"fused kernels never call lora_A, so the rank dropout would not run"
                )
            return data
        if adapter != ADAPTER:
            return data
        if data.get("load_in_4bit"):
            raise ValueError(
                f"`load_in_4bit: true` with `adapter: {ADAPTER}` would load the base model "
                f"unquantized (Axolotl 0.19 builds the quantization config only for lora/qlora). "
                f"For QLoRA with rank dropout write `adapter: {QLORA}` and keep the droplora_* keys."
            )
        if data.get("load_in_8bit"):
            raise ValueError(
                f"`load_in_8bit: true` with `adapter: {ADAPTER}` would load the base model "
                f"unquantized, and an 8-bit base is not supported with rank dropout: remove "
                f"load_in_8bit, or use a 4-bit base (`adapter: {QLORA}`, `load_in_4bit: true`)."
            )
        for key in FUSED_LORA_KERNELS:
            if data.get(key):
                raise ValueError(
                    f"`{key}: true` fuses the LoRA matmuls into one kernel that never calls "
                    f"lora_A, so rank dropout would silently not run: set `{key}: false` "
                    f"with `adapter: {ADAPTER}`."
                )
        return data


def _check_own_key_names(data: dict) -> None:
    known = RANK_DROPOUT_KEYS + SVD_INIT_KEYS
    unknown = sorted(key for key in data if key.startswith(OWN_KEY_PREFIXES) and key not in known)
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        hint = f"did you mean `{close[0]}`?" if close else f"the plugin's keys are {', '.join(known)}"
        raise ValueError(
            f"unknown key `{key}`: {hint} (the DropLoRA plugin owns every "
            f"{'/'.join(k + '*' for k in OWN_KEY_PREFIXES)} key; a misspelt one would "
            f"otherwise be ignored and train with the default)"
        )


def _check_svd_init_value(data: dict) -> None:
    """`milora` is this plugin's value, `pissa`/`pissa_niter_N` PEFT's, which the plugin converts
    at save time: a near miss (`MiLoRA`, `PiSSA`, `milroa`) would otherwise fail late, at model
    load, or not at all."""
    init = data.get("peft_init_lora_weights")
    if not isinstance(init, str) or svd_init(data):
        return
    folded = init.lower().replace("-", "").replace("_", "")
    if folded.startswith("pissa"):
        meant = "pissa" + init[len("pissa") :].lower() if init.lower().startswith("pissa") else "pissa"
    elif difflib.get_close_matches(folded, [MILORA], n=1, cutoff=0.75):
        meant = MILORA
    else:
        return  # another PEFT init (gaussian, olora, eva, …): PEFT checks it
    raise ValueError(
        f"`peft_init_lora_weights: {init}` is not a known init: did you mean "
        f"`peft_init_lora_weights: {meant}`? (the values are case-sensitive)"
    )


def _check_milora(data: dict) -> None:
    adapter = data.get("adapter")
    if adapter not in ("lora", ADAPTER):
        raise ValueError(
            f"`peft_init_lora_weights: {MILORA}` needs `adapter: lora` or `adapter: {ADAPTER}`, "
            f"got `adapter: {adapter}`"
        )
    if key := _quantized_base_key(data):
        raise ValueError(
            f"`peft_init_lora_weights: {MILORA}` needs a full-precision base to take the SVD "
            f"of and subtract from: remove `{key}`"
        )


def _quantized_base_key(data: dict) -> str | None:
    """The key that loads the base quantized (`load_in_4bit` / `load_in_8bit`), if one does."""
    return next((key for key in ("load_in_4bit", "load_in_8bit") if data.get(key)), None)


def _check_exact(data: dict, init: str | None) -> None:
    if not data.get("svd_init_exact"):
        return
    if init != MILORA:
        # PEFT's PiSSA writes the rounded W_p into the base before any plugin hook sees it
        raise ValueError(
            f"`svd_init_exact: true` needs `peft_init_lora_weights: {MILORA}` (got "
            f"{init or data.get('peft_init_lora_weights')}): "
            + (
                "PEFT's PiSSA init writes the rounded residual W_p into the base weights before the "
                "plugin sees the model, so W is no longer there to keep. Remove svd_init_exact."
                if init
                else "it changes how MiLoRA's residual base is kept. Remove svd_init_exact."
            )
        )
    if data.get("peft_use_dora"):
        raise ValueError(
            "`svd_init_exact: true` does not support DoRA (`peft_use_dora: true`): DoRA normalises "
            "by the norm of the base weight plus s·B·A, which would have to be W_p. Remove "
            "svd_init_exact or peft_use_dora."
        )


def _check_whole_weights(data: dict, init: str) -> None:
    if loads_weights_on_rank_0_only(data.get("fsdp_config")):
        # the other ranks load the base on the meta device and receive rank 0's weights only
        # when FSDP wraps the model, after the init has run: they would have nothing to decompose
        raise ValueError(
            f"`peft_init_lora_weights: {init}` with `fsdp_config.cpu_ram_efficient_loading: true`: "
            f"{META_WEIGHTS_REASON}. Set `cpu_ram_efficient_loading: false` in fsdp_config."
        )


def _check_converted_saves(data: dict) -> None:
    init = data.get("peft_init_lora_weights")
    if data.get("svd_init_save_base") == "residual":
        return
    fsdp = data.get("fsdp_config") or {}
    state_dict_type = str(fsdp.get("state_dict_type") or fsdp.get("fsdp_state_dict_type") or "")
    if (data.get("fsdp") or data.get("fsdp_version") or fsdp) and state_dict_type != "FULL_STATE_DICT":
        # FSDP's sharded state dicts (FSDP2's default) write each checkpoint as per-rank DCP
        # shards, with no adapter file to convert: the first checkpoint would fail
        raise ValueError(
            f"`peft_init_lora_weights: {init}` under FSDP needs `fsdp_config.state_dict_type: "
            f"FULL_STATE_DICT` (got {state_dict_type or 'the default, SHARDED_STATE_DICT'}): sharded "
            f"checkpoints hold no adapter file that can be converted for the original base. Set "
            f"`state_dict_type: FULL_STATE_DICT` in fsdp_config, or `svd_init_save_base: residual`."
        )
    if key := _quantized_base_key(data):
        raise ValueError(
            f"`peft_init_lora_weights: {init}` on a quantized base (`{key}`): the residual base "
            f"is quantized, so an adapter converted for the original base would be off by the "
            f"quantization error. Set `svd_init_save_base: residual`, or remove `{key}`."
        )
    if data.get("load_best_model_at_end"):
        # resuming works (each checkpoint keeps the adapter as trained in a subfolder), but the
        # Trainer reloads the best checkpoint from its top-level adapter only
        raise ValueError(
            f"`load_best_model_at_end` cannot be used with `peft_init_lora_weights: {init}`: the "
            f"Trainer would reload the best checkpoint's adapter, which is converted to rank 2r "
            f"for the original base, into the rank-r model training on the residual base. Remove "
            f"it and take the best `checkpoint-N` folder yourself (each is a plain LoRA for the "
            f"original base), or set `svd_init_save_base: residual`."
        )
