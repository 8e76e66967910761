"""MiLoRA initialisation (axolotl_droplora/method/milora.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_base_model, tiny_lora_model

from axolotl_droplora import init_milora

TOKENS = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(3))


def lora_layers(model):
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]


@pytest.mark.parametrize(
    "lora_kwargs",
    [{}, {"use_rslora": True}, {"use_dora": True}],
    ids=["lora", "rslora", "dora"],
)
def test_minor_components_with_unchanged_step_zero_output(lora_kwargs):
    base = tiny_base_model(seed=1).eval()
    expected = base(input_ids=TOKENS).logits
    originals = {n: m.weight.detach().clone() for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    model = tiny_lora_model(seed=1, **lora_kwargs).eval()  # same base weights, random A and B

    assert init_milora(model) == 10
    torch.testing.assert_close(model(input_ids=TOKENS).logits, expected, atol=1e-5, rtol=0)
    for name, layer in lora_layers(model):
        w = originals[name.removeprefix("base_model.model.")]
        s, r = layer.scaling["default"], layer.r["default"]
        b, a = layer.lora_B["default"].weight, layer.lora_A["default"].weight
        w_p = layer.get_base_layer().weight
        assert (torch.linalg.norm(w - w_p - s * b @ a) / torch.linalg.norm(w)) <= 1e-6
        # s·B·A holds exactly the r smallest singular values of W, and W_p keeps the others
        sigma = torch.linalg.svdvals(w.double()).float()
        torch.testing.assert_close(torch.linalg.svdvals(s * b @ a)[:r], sigma[-r:], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(torch.linalg.svdvals(w_p)[:-r], sigma[:-r], atol=1e-5, rtol=1e-4)
    if lora_kwargs.get("use_rslora"):
        assert layer.scaling["default"] == pytest.approx(16 / 8**0.5)


def test_bfloat16_weights_keep_the_function_they_compute():
    model = tiny_lora_model(seed=4).to(torch.bfloat16).eval()
    reference = tiny_base_model(seed=4).to(torch.bfloat16).eval()
    before = reference(input_ids=TOKENS).logits.float()
    init_milora(model)
    for _, layer in lora_layers(model):
        assert layer.get_base_layer().weight.dtype == torch.bfloat16
    after = model(input_ids=TOKENS).logits.float()
    assert (after - before).abs().max() < 0.05 * before.abs().max()


def test_a_model_without_lora_is_refused():
    with pytest.raises(ValueError, match="MiLoRA needs a PEFT LoRA model with adapter 'default'"):
        init_milora(tiny_base_model())


def test_a_rank_above_the_weights_smaller_side_is_refused():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_base_model(), LoraConfig(r=24, target_modules=["k_proj"]))  # k_proj: 16 x 32
    with pytest.raises(
        ValueError,
        match=r"takes the r=24 smallest singular triplets, but .*k_proj is \(16, 32\) and has only 16: lower lora_r",
    ):
        init_milora(model)


def test_a_partitioned_weight_it_cannot_gather_is_refused_with_the_reason_not_lower_r():
    """What a ZeRO-3 placeholder or an FSDP meta/sharded weight looks like to a plain init."""
    from conftest import tiny_lora_model

    model = tiny_lora_model()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    layer.get_base_layer().weight = torch.nn.Parameter(torch.empty(0))
    with pytest.raises(ValueError) as err:
        init_milora(model)
    message = str(err.value)
    assert "needs each target weight whole" in message and "partitioned or sharded" in message
    assert "lower lora_r" not in message


def test_meta_device_weights_are_refused_naming_fsdp_cpu_ram_efficient_loading():
    from conftest import tiny_lora_model

    model = tiny_lora_model()
    layer = model.base_model.model.model.layers[1].mlp.down_proj
    layer.get_base_layer().weight = torch.nn.Parameter(torch.empty(32, 64, device="meta"))
    with pytest.raises(ValueError, match="is on the meta device .*turn cpu_ram_efficient_loading off in fsdp_config"):
        init_milora(model)
