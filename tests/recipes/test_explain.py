"""`axolotl droplora explain RECIPE.yml`: offline validation and a plain-words report
(axolotl_droplora/recipes/explain.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "examples" / "yml").glob("*.yml"))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing explain does may write next to the user's recipe
    return tmp_path


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_paper_recipe_is_valid_and_is_its_own_paper_cell_with_no_departure(path, in_tmp):
    from axolotl_droplora.recipes.explain import explain, render

    report = explain(path)
    cell = report["paper_cell"]
    assert report["valid"] and cell["name"] == path.stem and cell["departures"] == []
    assert cell["gpus_for_paper_batch"] == 4  # the recipes are set for the paper's 4 GPUs
    said = render(report)
    assert f"paper cell: {path.stem} (" in said and "no hyperparameter departs from the paper's" in said
    assert "not a local folder: Axolotl downloads it from the Hugging Face Hub when training starts" in said
    assert list(in_tmp.iterdir()) == []


def write(tmp_path: Path, stem: str, **changes) -> Path:
    config = yaml.safe_load((ROOT / "examples" / "yml" / f"{stem}.yml").read_text())
    config.update(changes)
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(
        yaml.safe_dump({key: value for key, value in config.items() if value is not None}, sort_keys=False)
    )
    return recipe


def test_a_modified_recipe_lists_every_departure_and_fills_in_the_defaults(in_tmp):
    from axolotl_droplora.recipes.explain import explain, render

    # on 1 GPU the paper's batch needs 8 accumulation steps: that is not a departure
    recipe = write(
        in_tmp,
        "math-llama3_8b-droplora",
        droplora_rank_dropout=0.5,
        droplora_mask_mode=None,
        learning_rate=1e-4,
        weight_decay=0.1,
        gradient_accumulation_steps=8,
    )
    report = explain(recipe)
    cell = report["paper_cell"]
    assert cell["name"] == "math-llama3_8b-droplora" and cell["gpus_for_paper_batch"] == 1
    assert [(d["key"], d["recipe"], d["paper"]) for d in cell["departures"]] == [
        ("droplora_rank_dropout", 0.5, 0.3),
        ("learning_rate", 1e-4, 3e-4),
        ("weight_decay", 0.1, 0.0),
    ]
    said = render(report)
    assert "rank dropout: p = 0.5, mask element (default), rescale true (default)" in said
    assert "departs: droplora_rank_dropout = 0.5 (paper: 0.3)" in said
    assert "16 × 8 = 128 sequences per optimizer step on each GPU" in said
    assert "the paper's global batch 128 is reached on 1 GPU(s)" in said

    uneven = explain(write(in_tmp, "math-llama3_8b-droplora", micro_batch_size=3))
    assert uneven["paper_cell"]["departures"][-1]["key"] == "global batch"


def test_milora_saves_are_explained_as_rank_2r_and_pissa_with_dropout_warns(in_tmp):
    from axolotl_droplora.recipes.explain import explain, render

    milora = render(explain(ROOT / "examples" / "yml" / "math-llama2_7b-milora.yml"))
    assert (
        "MiLoRA init (milora): saves converted for the original base (svd_init_save_base: original "
        "(default)): rank 128 = 2 × 64"
    ) in milora
    assert "LoRA: r = 64, lora_alpha = 64, scaling alpha/r = 1, lora_dropout = 0.05" in milora
    assert "saved rank 128: vLLM needs --max-lora-rank 128 or more" in milora
    assert "warning:" not in milora

    pissa = render(explain(ROOT / "examples" / "yml" / "code-llama3_8b-pissa.yml"))
    assert "warning: PiSSA with lora_dropout 0.05" in pissa and "1.92–3.35" in pissa and "1.78 with 0" in pissa
    no_dropout = render(explain(write(in_tmp, "code-llama3_8b-pissa", lora_dropout=0.0)))
    assert "warning: PiSSA" not in no_dropout and "departs: lora_dropout = 0.0 (paper: 0.05)" in no_dropout

    residual = explain(write(in_tmp, "code-llama3_8b-pissa", svd_init_save_base="residual"))
    assert residual["saved"] == {
        "rank": 32,
        "converted": False,
        "vllm_max_lora_rank": 32,
        "vllm_refusals": [
            "init_lora_weights 'pissa_niter_16': vLLM refuses inits that change the base weights when PEFT "
            "loads the adapter (PiSSA, OLoRA, CorDA, LoftQ): merge it with PEFT and serve the merged model, "
            "or save it for the original base (svd_init_save_base: original)"
        ],
    }
    assert any(
        "with init_lora_weights 'pissa_niter_16': PEFT rebuilds the residual base W_p" in warning
        for warning in residual["warnings"]
    )
    assert "for the residual base W_p, which PEFT rebuilds as it loads it" in render(residual)
    # MiLoRA's residual save is an ordinary LoRA config: PEFT and vLLM load it on any base, wrongly
    milora_residual = explain(write(in_tmp, "math-llama2_7b-milora", svd_init_save_base="residual"))
    assert milora_residual["saved"]["vllm_refusals"] == []
    assert any("valid ONLY on the residual base W_p, not on" in warning for warning in milora_residual["warnings"])
    assert "saved as trained (svd_init_save_base: residual), valid only on the residual base W_p" in render(
        milora_residual
    )


def test_sequence_masks_with_sample_packing_warn(in_tmp):
    from axolotl_droplora.recipes.explain import explain

    report = explain(
        write(in_tmp, "commonsense-llama3_8b-droplora", droplora_mask_mode="sequence", sample_packing=True)
    )
    assert "one mask per packed row, shared by every sequence packed into it" in " ".join(report["warnings"])
    assert {d["key"] for d in report["paper_cell"]["departures"]} == {"droplora_mask_mode", "sample_packing"}


def test_a_local_base_and_a_recipe_far_from_the_papers(in_tmp, demo_dir):
    from axolotl_droplora.demo.task import demo_config
    from axolotl_droplora.recipes.explain import explain, render

    recipe = in_tmp / "demo.yml"
    recipe.write_text(yaml.safe_dump({**demo_config(demo_dir), "output_dir": str(in_tmp / "out")}))
    said = render(explain(recipe))
    assert f"base model: {demo_dir / 'model'} (a local folder)" in said
    assert "paper cell: none close (the nearest, " in said
    assert "training: max_steps 20 (overrides num_epochs)" in said


def test_the_cli_explains_offline_and_names_the_bad_keys(tmp_path, monkeypatch):
    hub = tmp_path / "hub"  # an empty cache: whatever explain fetched would land here
    monkeypatch.setenv("HF_HOME", str(hub))
    good = run_explain(ROOT / "examples" / "yml" / "conversation-llama2_7b-droplora.yml", tmp_path, "--json")
    assert good.returncode == 0, good.stderr[-3000:]
    report = json.loads(good.stdout)
    assert report["paper_cell"]["name"] == "conversation-llama2_7b-droplora"
    assert report["base_model"] == {
        "name": "meta-llama/Llama-2-7b-hf",
        "local": False,
        "note": (
            "not a local folder: Axolotl downloads it from the Hugging Face Hub when training starts "
            "(explain does not fetch it)"
        ),
    }
    assert report["method"]["rank_dropout"] == 0.3 and report["method"]["defaulted"] == ["droplora_rescale"]
    assert not any(hub.rglob("*Llama*"))

    bad = tmp_path / "bad.yml"
    config = yaml.safe_load((ROOT / "examples" / "yml" / "math-llama3_8b-droplora.yml").read_text())
    bad.write_text(yaml.safe_dump({**config, "lora_rr": 8, "droplora_mask_mode": "token"}))
    refused = run_explain(bad, tmp_path)
    assert refused.returncode != 0
    assert "bad.yml is not a valid recipe" in refused.stderr
    assert "lora_rr: unknown key: did you mean `lora_r`?; Axolotl would ignore it" in refused.stderr
    assert "droplora_mask_mode: Input should be 'element', 'sequence' or 'batch'" in refused.stderr
    as_json = run_explain(bad, tmp_path, "--json")
    assert as_json.returncode != 0
    errors = json.loads(as_json.stdout)["errors"]
    assert {error["key"] for error in errors} == {"lora_rr", "droplora_mask_mode"}

    # without the plugins line the plugin's keys are not in the schema: say what to add
    no_plugin = tmp_path / "no_plugin.yml"
    no_plugin.write_text(yaml.safe_dump({**config, "plugins": None, "adapter": "lora"}))
    refused = run_explain(no_plugin, tmp_path)
    assert refused.returncode != 0
    assert (
        "droplora_rank_dropout: unknown key: this is a DropLoRA key: add `plugins: "
        "[axolotl_droplora.DropLoRAPlugin]`" in refused.stderr
    )


def run_explain(recipe: Path, cwd: Path, *options: str):
    return run_cli([sys.executable, "-m", "axolotl_droplora", "explain", str(recipe), *options], cwd=cwd)
