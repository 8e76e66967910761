"""The YAML keys through Axolotl's own config loading (axolotl_droplora/args.py)."""

from __future__ import annotations

import pytest
import yaml

from axolotl_droplora.demo.task import demo_config


def load(tmp_path, demo_dir, **overrides):
    from axolotl.cli.config import load_cfg

    config = {**demo_config(demo_dir), "output_dir": str(tmp_path / "out"), **overrides}
    config = {key: value for key, value in config.items() if value is not None}
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return load_cfg(str(path))


def error_of(tmp_path, demo_dir, **overrides) -> str:
    with pytest.raises(Exception) as err:
        load(tmp_path, demo_dir, **overrides)
    assert not (tmp_path / "out").exists(), "a rejected config must write nothing"
    return str(err.value)


def test_valid_recipe_keeps_its_keys(tmp_path, demo_dir):
    cfg = load(tmp_path, demo_dir, droplora_mask_mode="batch", droplora_rescale=False)
    assert cfg.adapter == "droplora"
    assert (cfg.droplora_rank_dropout, cfg.droplora_mask_mode, cfg.droplora_rescale) == (0.3, "batch", False)
    # Axolotl auto-enables its fused LoRA kernels only for lora/qlora; they must stay off here
    assert not cfg.lora_mlp_kernel and not cfg.lora_qkv_kernel and not cfg.lora_o_kernel


def test_plain_lora_with_the_plugin_listed_is_untouched(tmp_path, demo_dir):
    cfg = load(tmp_path, demo_dir, adapter="lora", droplora_rank_dropout=None, droplora_mask_mode=None)
    assert cfg.adapter == "lora" and cfg.droplora_rank_dropout is None


@pytest.mark.parametrize("p", [1.0, 1.5, -0.2])
def test_rank_dropout_outside_0_1_names_the_key(tmp_path, demo_dir, p):
    message = error_of(tmp_path, demo_dir, droplora_rank_dropout=p)
    assert "droplora_rank_dropout" in message and "must be a number in [0, 1)" in message


def test_unknown_mask_mode_names_the_key_and_the_choices(tmp_path, demo_dir):
    message = error_of(tmp_path, demo_dir, droplora_mask_mode="token")
    assert "droplora_mask_mode" in message
    assert "'element', 'sequence' or 'batch'" in message


def test_droplora_keys_with_another_adapter_are_refused(tmp_path, demo_dir):
    message = error_of(tmp_path, demo_dir, adapter="lora", droplora_mask_mode=None)
    assert (
        "droplora_rank_dropout set, but `adapter: lora` does not use it: set `adapter: droplora` "
        "(or `adapter: qlora` on a 4-bit base) to train with rank dropout, or remove droplora_rank_dropout"
    ) in message


def test_4bit_base_with_adapter_droplora_points_to_qlora(tmp_path, demo_dir):
    message = error_of(tmp_path, demo_dir, load_in_4bit=True)
    assert "`load_in_4bit: true` with `adapter: droplora` would load the base model unquantized" in message
    assert "write `adapter: qlora` and keep the droplora_* keys" in message


def test_8bit_base_is_refused(tmp_path, demo_dir):
    message = error_of(tmp_path, demo_dir, load_in_8bit=True)
    assert "an 8-bit base is not supported with rank dropout: remove load_in_8bit" in message


def test_qlora_with_rank_dropout_keys_quantizes_and_turns_the_fused_kernels_off(tmp_path, demo_dir, caplog):
    from axolotl_droplora.plugin import callback_for

    with caplog.at_level("WARNING"):
        cfg = load(tmp_path, demo_dir, adapter="qlora", load_in_4bit=True, droplora_mask_mode="sequence")
    assert cfg.adapter == "qlora" and cfg.load_in_4bit is True
    assert (cfg.droplora_rank_dropout, cfg.droplora_mask_mode) == (0.3, "sequence")
    # Axolotl 0.19 switches its fused kernels on for qlora; the plugin switches them back off
    assert not cfg.lora_mlp_kernel and not cfg.lora_qkv_kernel and not cfg.lora_o_kernel
    assert "set to false: the fused kernels never call lora_A" in caplog.text
    assert callback_for(cfg).rank_dropout == 0.3
    plain_qlora = load(
        tmp_path, demo_dir, adapter="qlora", load_in_4bit=True, droplora_rank_dropout=None, droplora_mask_mode=None
    )
    assert callback_for(plain_qlora) is None  # no droplora_* key: QLoRA as Axolotl does it


def test_pissa_on_a_4bit_base_needs_residual_saves(tmp_path, demo_dir):
    message = error_of(tmp_path, demo_dir, adapter="qlora", load_in_4bit=True, peft_init_lora_weights="pissa")
    assert "Set `svd_init_save_base: residual`, or remove `load_in_4bit`" in message


@pytest.mark.parametrize("key", ["lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel"])
def test_fused_lora_kernels_are_refused(tmp_path, demo_dir, key):
    message = error_of(tmp_path, demo_dir, **{key: True})
    assert f"set `{key}: false` with `adapter: droplora`" in message


def test_milora_is_a_value_of_peft_init_lora_weights_with_lora_or_droplora(tmp_path, demo_dir):
    from axolotl_droplora.plugin import DropLoRAPlugin

    for adapter in ("lora", "droplora"):
        extra = {} if adapter == "droplora" else {"droplora_rank_dropout": None, "droplora_mask_mode": None}
        cfg = load(tmp_path, demo_dir, adapter=adapter, peft_init_lora_weights="milora", **extra)
        assert cfg.peft_init_lora_weights == "milora"
        # PEFT has no "milora" init: the plugin has Axolotl build a standard LoRA first
        assert DropLoRAPlugin().get_lora_config_kwargs(cfg) == {"init_lora_weights": True}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"load_in_8bit": True, "adapter": "lora"},
            "`peft_init_lora_weights: milora` needs a full-precision base to take the SVD of and subtract from: "
            "remove `load_in_8bit`",
        ),
        (
            {"load_best_model_at_end": True},
            "`load_best_model_at_end` cannot be used with `peft_init_lora_weights: milora`: the Trainer would reload",
        ),
    ],
)
def test_milora_refusals_name_the_key(tmp_path, demo_dir, overrides, message):
    if overrides.get("adapter") == "lora":
        overrides = {**overrides, "droplora_rank_dropout": None, "droplora_mask_mode": None}
    assert message in error_of(tmp_path, demo_dir, peft_init_lora_weights="milora", **overrides)


def test_svd_init_save_base_without_milora_is_refused(tmp_path, demo_dir):
    message = error_of(tmp_path, demo_dir, svd_init_save_base="residual")
    assert "svd_init_save_base is set, but neither MiLoRA nor PiSSA is" in message


def test_pissa_converted_saves_refuse_reloading_the_best_checkpoint(tmp_path, demo_dir):
    message = error_of(tmp_path, demo_dir, peft_init_lora_weights="pissa_niter_4", load_best_model_at_end=True)
    assert "`load_best_model_at_end` cannot be used with `peft_init_lora_weights: pissa_niter_4`" in message


@pytest.mark.parametrize(
    "key, suggestion",
    [
        ("droplora_rank_droput", "droplora_rank_dropout"),
        ("droplora_maskmode", "droplora_mask_mode"),
        ("droplora_rescaled", "droplora_rescale"),
        ("svd_init_save_bsae", "svd_init_save_base"),
    ],
)
def test_a_misspelt_plugin_key_names_itself_and_the_closest_key(tmp_path, demo_dir, key, suggestion):
    # Axolotl drops keys its schema does not know: without this the run would train with p = 0.3
    message = error_of(tmp_path, demo_dir, **{key: 0.5 if "dropout" in suggestion else "batch"})
    assert f"unknown key `{key}`: did you mean `{suggestion}`?" in message


def test_an_unlike_plugin_key_lists_the_plugins_keys(tmp_path, demo_dir):
    message = error_of(tmp_path, demo_dir, droplora_temperature=2)
    assert (
        "unknown key `droplora_temperature`: the plugin's keys are droplora_rank_dropout, "
        "droplora_mask_mode, droplora_rescale, svd_init_save_base, svd_init_exact"
    ) in message


@pytest.mark.parametrize(
    "value, meant",
    [
        ("MiLoRA", "milora"),
        ("Milora", "milora"),
        ("mi_lora", "milora"),
        ("milroa", "milora"),
        ("PiSSA", "pissa"),
        ("PISSA_niter_4", "pissa_niter_4"),
    ],
)
def test_a_near_miss_of_an_svd_init_names_the_value_meant(tmp_path, demo_dir, value, meant):
    message = error_of(tmp_path, demo_dir, peft_init_lora_weights=value)
    assert (
        f"`peft_init_lora_weights: {value}` is not a known init: did you mean "
        f"`peft_init_lora_weights: {meant}`? (the values are case-sensitive)"
    ) in message


@pytest.mark.parametrize("value", ["gaussian", "olora", True, False])
def test_other_inits_are_left_to_peft(tmp_path, demo_dir, value):
    assert load(tmp_path, demo_dir, peft_init_lora_weights=value).peft_init_lora_weights == value


@pytest.mark.parametrize("init", ["milora", "pissa"])
def test_svd_inits_with_fsdp_cpu_ram_efficient_loading_are_refused(init):
    from axolotl_droplora.args import DropLoRAArgs

    with pytest.raises(
        ValueError,
        match=f"`peft_init_lora_weights: {init}` with `fsdp_config.cpu_ram_efficient_loading: true`: off rank 0",
    ):
        DropLoRAArgs.model_validate(
            {
                "adapter": "lora",
                "peft_init_lora_weights": init,
                "fsdp_config": {"fsdp_version": 2, "cpu_ram_efficient_loading": True},
            }
        )


@pytest.mark.parametrize("state_dict_type", [None, "SHARDED_STATE_DICT"])
@pytest.mark.parametrize("init", ["milora", "pissa"])
def test_svd_inits_under_fsdp_with_sharded_checkpoints_are_refused(init, state_dict_type):
    """Sharded checkpoints (FSDP2's default) hold DCP shards and no adapter file to convert:
    measured through Axolotl's CLI, the first checkpoint failed in the conversion."""
    from axolotl_droplora.args import DropLoRAArgs

    fsdp_config = {"auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}
    if state_dict_type:
        fsdp_config["state_dict_type"] = state_dict_type
    recipe = {"adapter": "lora", "peft_init_lora_weights": init, "fsdp_version": 2, "fsdp_config": fsdp_config}
    expected = (
        f"`peft_init_lora_weights: {init}` under FSDP needs `fsdp_config.state_dict_type: FULL_STATE_DICT` "
        f"\\(got {state_dict_type or 'the default'}"
    )
    with pytest.raises(ValueError, match=expected):
        DropLoRAArgs.model_validate(recipe)
    # what the message offers works: full state dicts, or residual saves (nothing converted)
    DropLoRAArgs.model_validate({**recipe, "fsdp_config": {**fsdp_config, "state_dict_type": "FULL_STATE_DICT"}})
    DropLoRAArgs.model_validate({**recipe, "svd_init_save_base": "residual"})
