"""The README.md every adapter of a run carries, and check-adapter's serving facts (model_card.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_cli, tiny_base_model, tiny_lora_model
from test_plugin import write_recipe


def card_of(folder: Path) -> tuple[dict, str]:
    """The YAML metadata and the text of a README.md."""
    text = (folder / "README.md").read_text()
    _, metadata, body = text.split("---\n", 2)
    return yaml.safe_load(metadata), body


def check_adapter(folder: Path, cwd: Path) -> str:
    checked = run_cli([sys.executable, "-m", "axolotl_droplora", "check-adapter", str(folder)], cwd=cwd)
    assert checked.returncode == 0, checked.stderr[-3000:]
    return checked.stdout


def test_a_droplora_milora_run_writes_the_card_into_every_checkpoint_and_the_final_adapter(tmp_path, demo_dir):
    recipe = write_recipe(
        tmp_path,
        demo_dir,
        peft_init_lora_weights="milora",
        lora_alpha=16,
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        droplora_mask_mode=None,
    )
    # Axolotl's card quotes the recipe in a code block: its comments must not be taken for headings
    recipe.write_text("# a shared recipe\n## with a comment that looks like a heading\n" + recipe.read_text())
    trained = run_cli(["axolotl", "train", str(recipe)], cwd=tmp_path)
    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-4000:]

    out = tmp_path / "out"
    for folder in (out / "checkpoint-2", out / "checkpoint-4", out):
        metadata, body = card_of(folder)
        assert {"droplora", "milora", "lora", "axolotl"} <= set(metadata["tags"]), folder
        assert metadata["library_name"] == "peft"
        assert body.count("<!-- axolotl-droplora: begin") == 1
        assert "## Training method: DropLoRA + MiLoRA (axolotl-droplora)" in body
        assert "p = 0.3: the chance that a rank channel is dropped" in body  # set in the recipe
        assert "mask mode `element` (default)" in body and "rescale true (default)" in body
        assert "**rank 32 = 2 × 16 after MiLoRA conversion**" in body
        assert "`svd_init_save_base: original`, the default" in body
        assert "(https://arxiv.org/abs/2508.17337)" in body and "(https://arxiv.org/abs/2406.09044)" in body
        assert "model = PeftModel.from_pretrained(base, " in body and "merge_and_unload()" in body
        assert "--max-lora-rank 32" in body
        assert json.loads((folder / "adapter_config.json").read_text())["r"] == 32  # what the card says
    metadata, body = card_of(out)
    # the final card is the Trainer's (Axolotl's badge and recipe), with the section before its sections
    assert "See axolotl config" in body and "## with a comment that looks like a heading" in body
    assert body.index("## Training method") < body.index("## Model description")
    assert body.index("```yaml") < body.index("## Training method")  # not inside the quoted recipe

    said = check_adapter(out, tmp_path)
    assert "model card: trained with DropLoRA p=0.3 mask_mode=element rescale=true + MiLoRA (milora)" in said
    assert "saved for the original base: rank 32 = 2 × 16 after MiLoRA conversion" in said
    assert "saved rank 32: vLLM needs --max-lora-rank 32 or more" in said and "its default is 16" in said
    assert "refuses" not in said


def saved_with_callback(model, cfg: dict, folder: Path) -> tuple[dict, str]:
    """The plugin's callback for recipe `cfg` prepared on `model` (what post_model_load and TRL's
    on_init_end do), then a PEFT save as the Trainer makes at each checkpoint."""
    from axolotl.utils.dict import DictDefault

    from axolotl_droplora.plugin import callback_for

    callback_for(DictDefault(cfg)).prepare(model)
    model.save_pretrained(folder)
    return card_of(folder)


def test_a_plain_droplora_card_has_the_droplora_tag_and_the_defaults_named(tmp_path):
    metadata, body = saved_with_callback(tiny_lora_model(), {"adapter": "droplora"}, tmp_path / "adapter")
    assert "droplora" in metadata["tags"] and "milora" not in metadata["tags"]
    assert "## Training method: DropLoRA (axolotl-droplora)" in body
    assert "p = 0.3 (default)" in body and "mask mode `element` (default)" in body
    assert "MiLoRA" not in body and "conversion" not in body
    assert "- saved adapter: rank 8" in body
    assert "its default 16 is enough" in body


def test_a_qlora_droplora_card_says_the_base_was_4_bit(tmp_path, demo_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    base = AutoModelForCausalLM.from_pretrained(
        demo_dir / "model",
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        ),
    )
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
    cfg = {"adapter": "qlora", "load_in_4bit": True, "droplora_mask_mode": "batch", "droplora_rescale": False}
    metadata, body = saved_with_callback(model, cfg, tmp_path / "adapter")
    assert "droplora" in metadata["tags"]
    assert "p = 0.3 (default)" in body and "mask mode `batch`:" in body and "rescale false:" in body
    assert "quantized to 4 bits (QLoRA)" in body and "load it on the base quantized the same way" in body
    assert "- LoRA r = 16, lora_alpha = 32, scaling α/r = 2" in body


def test_the_card_is_written_once_however_often_peft_saves(tmp_path):
    model = tiny_lora_model()
    saved_with_callback(model, {"adapter": "droplora", "droplora_rank_dropout": 0.1}, tmp_path)
    model.save_pretrained(tmp_path)  # the Trainer's final save over the same folder
    _, body = card_of(tmp_path)
    assert body.count("## Training method") == 1 and "p = 0.1:" in body


def residual_pissa_adapter(folder: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    from axolotl_droplora import DropLoRACallback

    model = get_peft_model(
        tiny_base_model(), LoraConfig(r=8, lora_alpha=8, init_lora_weights="pissa", target_modules=["q_proj", "v_proj"])
    )
    DropLoRACallback(rank_dropout=None, save_base="residual").prepare(model)  # the TRL route
    model.save_pretrained(folder)
    return folder


def test_a_residual_pissa_card_says_peft_rebuilds_w_p_and_vllm_refuses_it(tmp_path):
    """As vLLM 0.32 and PEFT did in reports/vllm-cpu: PEFT re-runs PiSSA as it loads the adapter, so on
    the original base it gives the trained model; vLLM refuses the init."""
    import torch
    from peft import PeftModel

    adapter = residual_pissa_adapter(tmp_path / "adapter")
    metadata, body = card_of(adapter)
    assert "pissa" in metadata["tags"] and "droplora" not in metadata["tags"]
    assert (
        "**saved as trained** (`svd_init_save_base: residual`), for the residual base W_p: its config keeps "
        "`init_lora_weights: pissa`, so PEFT re-runs PiSSA on the base it loads it on and rebuilds W_p"
    ) in body
    assert "valid ONLY" not in body and "wrong outputs" not in body
    assert "vLLM refuses it as it is: init_lora_weights 'pissa': vLLM refuses inits that change the base" in body
    assert "vllm serve" not in body  # no command that would not work

    said = check_adapter(adapter, tmp_path)
    assert f"{adapter}: PEFT LoRA with init_lora_weights 'pissa' (PEFT changes the base weights as it loads it)" in said
    assert "saved as trained (svd_init_save_base: residual), for the residual base W_p: PEFT re-runs PiSSA" in said
    assert "vLLM refuses it as it is: init_lora_weights 'pissa'" in said

    # what the card claims: vanilla PEFT on the ORIGINAL base gives the model the adapter was saved from
    trained = PeftModel.from_pretrained(tiny_base_model(), adapter)  # PiSSA re-run, then A, B loaded
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        for name, param in trained.named_parameters():  # a "trained" adapter: move A, B off their init
            if "lora_" in name:
                param.add_(0.05 * torch.randn_like(param))
        expected = trained(input_ids=tokens).logits
    trained.save_pretrained(tmp_path / "moved")
    reloaded = PeftModel.from_pretrained(tiny_base_model(), tmp_path / "moved")

    # the same A, B with init_lora_weights true (no rebuild) on the original weights: another model
    config_file = tmp_path / "moved" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "init_lora_weights": True}))
    without_rebuild = PeftModel.from_pretrained(tiny_base_model(), tmp_path / "moved")
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=tokens).logits, expected)
        assert not torch.allclose(without_rebuild(input_ids=tokens).logits, expected, atol=1e-3)


def residual_milora_adapter(folder: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    from axolotl_droplora import DropLoRACallback

    model = get_peft_model(tiny_base_model(), LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    DropLoRACallback(rank_dropout=0.1, milora=True, save_base="residual").prepare(model)
    model.save_pretrained(folder)
    return folder


def test_a_residual_milora_card_warns_it_is_valid_only_on_w_p_and_vllm_would_serve_it_wrongly(tmp_path):
    adapter = residual_milora_adapter(tmp_path / "adapter")
    _, body = card_of(adapter)
    assert "**saved as trained** (`svd_init_save_base: residual`): valid ONLY on the residual base W_p" in body
    assert "vLLM loads it and gives wrong outputs (vLLM has no residual base)" in body
    assert "vLLM refuses" not in body  # its config is an ordinary LoRA's: vLLM has nothing to refuse

    said = check_adapter(adapter, tmp_path)
    assert f"{adapter}: plain PEFT LoRA, r=4" in said
    assert "saved as trained (svd_init_save_base: residual): valid ONLY on the residual base W_p" in said
    assert "vLLM and PEFT on the original base give wrong outputs" in said


def test_check_adapter_says_vllm_refuses_dora_and_needs_the_rank(tmp_path):
    tiny_lora_model(use_dora=True).save_pretrained(tmp_path / "dora")  # no card: a stranger's adapter
    said = check_adapter(tmp_path / "dora", tmp_path)
    assert "model card" not in said
    assert f"{tmp_path / 'dora'}: PEFT LoRA with DoRA (use_dora: a magnitude vector per layer), r=8" in said
    assert "plain" not in said
    assert "vLLM refuses it as it is: use_dora: vLLM refuses DoRA adapters: merge the adapter" in said
    assert "saved rank 8: vLLM needs --max-lora-rank 8 or more" in said


@pytest.mark.parametrize(
    "config, rank, needed",
    [
        ({"r": 1}, 1, 1),  # vLLM 0.32 allows 1 (its pydantic error lists it)
        ({"r": 2}, 2, 8),
        ({"r": 16}, 16, 16),
        ({"r": 17}, 17, 32),
        ({"r": 300}, 300, 320),
        ({"r": 8, "rank_pattern": {"q_proj": 100}}, 100, 128),  # the largest rank is what vLLM sizes for
        ({"r": 1024}, 1024, None),
    ],
)
def test_serving_facts_pick_the_smallest_max_lora_rank_vllm_accepts(config, rank, needed):
    from axolotl_droplora.model_card import serving_facts

    facts = serving_facts(config)
    assert (facts.saved_rank, facts.max_lora_rank) == (rank, needed)
    assert bool(facts.refusals) == (needed is None)


@pytest.mark.parametrize(
    "config, refused",
    [
        # the inits vLLM 0.32 serves (they only set the starting A, B), whatever their case
        ({"init_lora_weights": True}, None),
        ({"init_lora_weights": False}, None),
        ({"init_lora_weights": "gaussian"}, None),
        ({"init_lora_weights": "eva"}, None),  # served in reports/vllm-cpu
        ({"init_lora_weights": "EVA"}, None),
        ({"init_lora_weights": "orthogonal"}, None),
        ({"modules_to_save": ["score"]}, None),
        # refused, as vLLM refused them in reports/vllm-cpu (DoRA, pissa, olora) or reads them in peft_helper.py
        ({"init_lora_weights": "pissa"}, "init_lora_weights 'pissa': vLLM refuses inits that change the base"),
        ({"init_lora_weights": "pissa_niter_16"}, "init_lora_weights 'pissa_niter_16': vLLM refuses inits"),
        ({"init_lora_weights": "olora"}, "init_lora_weights 'olora': vLLM refuses inits"),
        ({"init_lora_weights": "loftq"}, "init_lora_weights 'loftq': vLLM refuses inits"),
        ({"use_dora": True}, "use_dora: vLLM refuses DoRA adapters"),
        ({"lora_bias": True}, "lora_bias: vLLM refuses LoRA biases"),
        ({"modules_to_save": ["embed_tokens", "lm_head"]}, "modules_to_save ['embed_tokens', 'lm_head']: vLLM serves"),
    ],
)
def test_serving_facts_refuse_what_vllm_refuses_and_name_the_kind(config, refused):
    from axolotl_droplora.model_card import adapter_kind, serving_facts

    facts = serving_facts({"r": 8, **config})
    assert len(facts.refusals) == (0 if refused is None else 1)
    if refused is not None:
        assert facts.refusals[0].startswith(refused)
    plain = refused is None and not config.get("modules_to_save")
    assert (adapter_kind({"r": 8, **config}) == "plain PEFT LoRA") == plain
