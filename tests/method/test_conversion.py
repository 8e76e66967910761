"""Save-time conversion to the original base (axolotl_droplora/method/conversion.py)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_base_model
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from axolotl_droplora import (
    convert_adapter_dir,
    fold_into_original_base,
    init_milora,
    install_rank_dropout,
    snapshot_initial_adapter,
)
from axolotl_droplora.method.conversion import doubled_rank_config

TOKENS = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(9))


def trained_milora_model(seed: int = 0, **lora_kwargs):
    model = get_peft_model(
        tiny_base_model(seed),
        LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], **lora_kwargs),
    )
    init_milora(model)
    initial = snapshot_initial_adapter(model)
    install_rank_dropout(model, p=0.3, mask_mode="batch")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    for step in range(4):
        torch.manual_seed(step)
        model(input_ids=TOKENS, labels=TOKENS).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), initial


@pytest.mark.parametrize("lora_kwargs", [{}, {"use_rslora": True}, {"use_dora": True}], ids=["lora", "rslora", "dora"])
def test_fold_keeps_the_function_and_restores_the_original_base(lora_kwargs, tmp_path):
    model, initial = trained_milora_model(**lora_kwargs)
    expected = model(input_ids=TOKENS).logits
    fold_into_original_base(model, initial)
    torch.testing.assert_close(model(input_ids=TOKENS).logits, expected, atol=1e-5, rtol=0)
    original = tiny_base_model(0)
    for name, param in original.named_parameters():
        if name.endswith("proj.weight") and any(t in name for t in ("q_proj", "v_proj", "up_proj", "down_proj")):
            folded = model.get_parameter("base_model.model." + name.replace(".weight", ".base_layer.weight"))
            torch.testing.assert_close(folded, param, atol=1e-6, rtol=0)

    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["init_lora_weights"] is True
    assert config["lora_alpha"] == pytest.approx(8 * 2**0.5 if lora_kwargs.get("use_rslora") else 16)
    weights = load_file(tmp_path / "adapter_model.safetensors")
    assert all(w.shape[0] == 16 for k, w in weights.items() if ".lora_A." in k)


def test_on_disk_conversion_matches_the_in_memory_fold_and_is_idempotent(tmp_path):
    model, initial = trained_milora_model()
    model.save_pretrained(tmp_path / "checkpoint")
    convert_adapter_dir(tmp_path / "checkpoint", initial)
    on_disk = load_file(tmp_path / "checkpoint" / "adapter_model.safetensors")
    convert_adapter_dir(tmp_path / "checkpoint", initial)  # a second pass changes nothing
    assert load_file(tmp_path / "checkpoint" / "adapter_model.safetensors").keys() == on_disk.keys()
    assert json.loads((tmp_path / "checkpoint" / "adapter_config.json").read_text())["r"] == 16
    assert not (tmp_path / "checkpoint" / ".converting").exists()

    fold_into_original_base(model, initial)
    model.save_pretrained(tmp_path / "folded")
    folded = load_file(tmp_path / "folded" / "adapter_model.safetensors")
    assert on_disk.keys() == folded.keys()
    for key in folded:
        torch.testing.assert_close(on_disk[key], folded[key])


def test_doubled_rank_config_keeps_the_scaling():
    plain = doubled_rank_config({"r": 8, "lora_alpha": 8, "rank_pattern": {"q_proj": 4}, "alpha_pattern": {}})
    assert (plain["r"], plain["lora_alpha"], plain["rank_pattern"]) == (16, 16, {"q_proj": 8})
    rs = doubled_rank_config({"r": 8, "lora_alpha": 8, "use_rslora": True})
    assert rs["lora_alpha"] / rs["r"] ** 0.5 == pytest.approx(8 / 8**0.5)
