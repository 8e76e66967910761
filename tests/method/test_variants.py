"""Rank dropout on every LoRA variant × mask mode, through the same callback users get.

{plain, DoRA, PiSSA, MiLoRA, rsLoRA} × {element, sequence, batch}: SVD inits start from the base
model's outputs; a few training steps; the saved adapter on the *original* base reproduces the
trained model's eval logits in vanilla PEFT (one fresh process for all of them); p = 0 is the
variant without rank dropout, to the bit; DoRA's eval output equals its merged model.
"""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from conftest import run_cli, tiny_base_model
from peft import LoraConfig, get_peft_model

from axolotl_droplora import MASK_MODES, DropLoRACallback

TOKENS = torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(21))
VARIANTS = {
    "plain": {},
    "dora": {"use_dora": True},
    "pissa": {"init_lora_weights": "pissa"},
    "milora": {},
    "rslora": {"use_rslora": True},
}
TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


def variant_model(variant: str):
    alpha = 8 if variant in ("pissa", "milora") else 16  # α = r for the SVD inits, as the papers do
    config = LoraConfig(r=8, lora_alpha=alpha, lora_dropout=0.05, target_modules=TARGETS, **VARIANTS[variant])
    return get_peft_model(tiny_base_model(seed=3), config)


def train(model, callback, steps=3):
    callback.prepare(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(steps):
        torch.manual_seed(step)
        model(input_ids=TOKENS, labels=TOKENS).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    callback.on_train_end(None, None, None, model=model)
    return model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every combination trained and saved; the expected eval logits kept beside it."""
    root = tmp_path_factory.mktemp("variants")
    results = {}
    for variant in VARIANTS:
        for mask_mode in MASK_MODES:
            model = variant_model(variant)
            callback = DropLoRACallback(rank_dropout=0.3, mask_mode=mask_mode, milora=variant == "milora")
            callback.prepare(model)
            step0 = model.eval()(input_ids=TOKENS).logits.detach()
            train(model, callback)
            with torch.no_grad():
                logits = model(input_ids=TOKENS).logits
            model.save_pretrained(root / f"{variant}-{mask_mode}")
            results[variant, mask_mode] = {
                "model": model,
                "logits": logits,
                "step0": step0,
                "dir": root / f"{variant}-{mask_mode}",
            }
    tiny_base_model(seed=3).save_pretrained(root / "base")
    return root, results


@pytest.mark.parametrize("variant", ["pissa", "milora"])
def test_svd_inits_start_from_the_base_models_outputs(trained, variant):
    base_logits = tiny_base_model(seed=3).eval()(input_ids=TOKENS).logits
    for mask_mode in MASK_MODES:
        torch.testing.assert_close(trained[1][variant, mask_mode]["step0"], base_logits, atol=1e-5, rtol=0)


def test_every_saved_adapter_reproduces_its_trained_model_on_the_original_base(trained, tmp_path):
    root, results = trained
    torch.save(TOKENS, tmp_path / "tokens.pt")
    script = """
import sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM
from peft import PeftModel
root, names, out = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
tokens = torch.load(Path(out).parent / "tokens.pt")
logits = {}
with torch.no_grad():
    for name in names:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(root / "base"), root / name)
        logits[name] = model.eval()(input_ids=tokens).logits
torch.save(logits, out)
assert not any(m.startswith("axolotl_droplora") for m in sys.modules), "imported us"
"""
    names = [result["dir"].name for result in results.values()]
    done = run_cli([sys.executable, "-c", script, str(root), ",".join(names), str(tmp_path / "out.pt")], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    vanilla = torch.load(tmp_path / "out.pt")
    base_logits = tiny_base_model(seed=3).eval()(input_ids=TOKENS).logits
    for result in results.values():
        name = result["dir"].name
        torch.testing.assert_close(vanilla[name], result["logits"], atol=1e-5, rtol=0, msg=name)
        assert (vanilla[name] - base_logits).abs().max() > 1e-3, f"{name} did not train"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_p_zero_is_the_variant_without_rank_dropout(variant):
    milora = variant == "milora"
    with_p0 = train(variant_model(variant), DropLoRACallback(rank_dropout=0.0, milora=milora))
    without = train(variant_model(variant), DropLoRACallback(rank_dropout=None, milora=milora))
    for (name, a), (_, b) in zip(with_p0.state_dict().items(), without.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("mask_mode", MASK_MODES)
def test_dora_eval_output_equals_its_merged_model(trained, mask_mode):
    model = trained[1]["dora", mask_mode]["model"]
    merged = copy.deepcopy(model).merge_and_unload().eval()
    torch.testing.assert_close(
        merged(input_ids=TOKENS).logits, trained[1]["dora", mask_mode]["logits"], atol=1e-5, rtol=0
    )
