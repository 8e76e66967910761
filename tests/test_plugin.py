"""`adapter: droplora` end to end through Axolotl's real CLI (axolotl_droplora/plugin.py)."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from safetensors.torch import load_file

from axolotl_droplora.demo.task import demo_config

LAYERS_LOG = "DropLoRA: rank dropout p={p} mask_mode={mode} rescale={rescale} on 10 LoRA layers ({kind})"


def write_recipe(tmp_path: Path, demo_dir: Path, **overrides) -> Path:
    config = {**demo_config(demo_dir), "output_dir": str(tmp_path / "out"), "max_steps": 6}
    config.update(overrides)
    config = {key: value for key, value in config.items() if value is not None}
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(yaml.safe_dump(config, sort_keys=False))
    return recipe


def train_loss(log: str) -> float:
    return float(re.findall(r"'train_loss': '([^']+)'", log)[-1])


VANILLA_PEFT_LOGITS = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from peft import PeftModel
base_dir, adapter_dir, merged_dir, out, bits = sys.argv[1:]
# a QLoRA adapter is trained on the NF4-quantized base, so it is checked there
quantized = {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
    bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)} if bits == "4" else {}
tokens = AutoTokenizer.from_pretrained(base_dir)(
    ["What is 12 plus 30?", "What is 7 times 8? 7 * 8 = 56."], return_tensors="pt", padding=True
).input_ids
with torch.no_grad():
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, **quantized),
                                     adapter_dir).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    if bits == "4":  # merge-lora NF4-roundtrips embeddings and lm_head too; QLoRA training does not
        original = AutoModelForCausalLM.from_pretrained(base_dir)
        merged.get_input_embeddings().load_state_dict(original.get_input_embeddings().state_dict())
        merged.get_output_embeddings().load_state_dict(original.get_output_embeddings().state_dict())
    base = AutoModelForCausalLM.from_pretrained(base_dir, **quantized).eval()
    torch.save({"peft": peft(tokens).logits, "merged": merged(tokens).logits,
                "base": base(tokens).logits}, out)
assert not any(name.startswith("axolotl_droplora") for name in sys.modules), "imported us"
"""


MILORA = {"peft_init_lora_weights": "milora", "lora_alpha": 16, "save_strategy": "steps", "save_steps": 3}


@pytest.mark.parametrize(
    "launcher, overrides",
    [
        (["axolotl", "train"], {"droplora_mask_mode": "element"}),
        ([sys.executable, "-m", "axolotl.cli.train"], {"droplora_mask_mode": "batch"}),
        ([sys.executable, "-m", "axolotl.cli.train"], {"droplora_mask_mode": "sequence", **MILORA}),
        (
            [sys.executable, "-m", "axolotl.cli.train"],
            {"adapter": "lora", "droplora_rank_dropout": None, "droplora_mask_mode": None, **MILORA},
        ),
        ([sys.executable, "-m", "axolotl.cli.train"], {"droplora_mask_mode": "element", "peft_use_dora": True}),
        (
            [sys.executable, "-m", "axolotl.cli.train"],
            {"droplora_mask_mode": "batch", **MILORA, "peft_init_lora_weights": "pissa"},
        ),
        ([sys.executable, "-m", "axolotl.cli.train"], {"droplora_mask_mode": "sequence", "peft_use_rslora": True}),
        # bitsandbytes' CPU backend: a real NF4 base (the demo model is wide enough for its kernels)
        (["axolotl", "train"], {"adapter": "qlora", "load_in_4bit": True, "droplora_mask_mode": "element"}),
    ],
    ids=[
        "droplora-axolotl-train",
        "droplora-python-m",
        "droplora+milora",
        "lora+milora",
        "droplora+dora",
        "droplora+pissa",
        "droplora+rslora",
        "qlora+droplora",
    ],
)
def test_trains_saves_plain_lora_for_the_original_base_and_merges(tmp_path, demo_dir, launcher, overrides):
    import torch

    recipe = write_recipe(tmp_path, demo_dir, **overrides)
    trained = run_cli([*launcher, str(recipe)], cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    log = trained.stdout + trained.stderr
    adapter = overrides.get("adapter", "droplora")
    if adapter in ("droplora", "qlora"):
        kind = "Linear4bit" if adapter == "qlora" else "Linear"
        assert LAYERS_LOG.format(p=0.3, mode=overrides["droplora_mask_mode"], rescale=True, kind=kind) in log
    else:
        assert "DropLoRA: rank dropout" not in log
    milora = "peft_init_lora_weights" in overrides  # MiLoRA or PiSSA: saves are converted
    if overrides.get("peft_init_lora_weights") == "milora":
        assert "MiLoRA: initialised 10 layers in" in log
    if milora:
        assert "adapter converted to rank 2r on the original base for saving" in log
    assert math.isfinite(train_loss(log))

    out = tmp_path / "out"
    rank = 32 if milora else 16  # MiLoRA saves B·A − B0·A0 as a rank-2r LoRA
    for adapter_dir in [out] + ([out / "checkpoint-3", out / "checkpoint-6"] if milora else []):
        adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
        assert adapter_config["peft_type"] == "LORA" and adapter_config["r"] == rank, adapter_dir
        assert adapter_config["init_lora_weights"] is True
        weights = load_file(adapter_dir / "adapter_model.safetensors")
        assert all(re.search(r"\.(lora_[AB]\.weight|lora_magnitude_vector)$", name) for name in weights)
        assert all(w.shape[0] == rank for name, w in weights.items() if "lora_A" in name)
    lora_b = {name: w for name, w in weights.items() if "lora_B" in name}
    assert len(lora_b) == 10 and all(w.abs().sum() > 0 for w in lora_b.values())  # B starts at 0

    merged = run_cli(["axolotl", "merge-lora", str(recipe)], cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert (out / "merged" / "model.safetensors").is_file()

    checked = run_cli(
        [
            sys.executable,
            "-c",
            VANILLA_PEFT_LOGITS,
            str(demo_dir / "model"),
            str(out),
            str(out / "merged"),
            str(tmp_path / "logits.pt"),
            "4" if adapter == "qlora" else "32",
        ],
        cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stderr[-3000:]
    result = torch.load(tmp_path / "logits.pt")
    # bitsandbytes' CPU 4-bit matmul differs from the dequantized fp32 matmul by ~2e-3 here
    torch.testing.assert_close(result["merged"], result["peft"], atol=1e-2 if adapter == "qlora" else 1e-4, rtol=0)
    assert (result["peft"] - result["base"]).abs().max() > 1e-3  # the adapter changed the model


def dpo_recipe(tmp_path: Path, demo_dir: Path, **overrides) -> Path:
    rows = [json.loads(line) for line in (demo_dir / "data" / "train.jsonl").read_text().splitlines()]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"prompt": r["instruction"], "chosen": r["output"], "rejected": "The answer is 0."}) + "\n"
            for r in rows[:32]
        )
    )
    return write_recipe(
        tmp_path,
        demo_dir,
        rl="dpo",
        max_steps=2,
        micro_batch_size=4,
        train_on_inputs=None,
        logging_steps=1,
        datasets=[{"path": str(pairs), "ds_type": "json", "split": "train", "type": "passthrough.default"}],
        **overrides,
    )


@pytest.mark.parametrize("init", [None, "pissa", "milora"])
def test_dpo_reference_is_the_starting_model_after_svd_inits(tmp_path, demo_dir, init):
    """At step 0 the policy is the starting model; so must the reference be: rewards exactly 0.
    TRL's reference is the adapter-disabled model, which after PiSSA/MiLoRA is W_p, unless the
    model has an adapter named "ref" (the plugin's frozen copy of A0, B0)."""
    recipe = dpo_recipe(
        tmp_path,
        demo_dir,
        adapter="lora",
        droplora_rank_dropout=None,
        droplora_mask_mode=None,
        lora_dropout=0.0,
        lora_alpha=16,
        peft_init_lora_weights=init,
    )
    trained = run_cli([sys.executable, "-m", "axolotl.cli.train", str(recipe)], cwd=tmp_path)
    log = trained.stdout + trained.stderr
    assert trained.returncode == 0, log[-4000:]
    first_rewards = re.findall(r"'rewards/chosen': '?(-?[0-9.e+-]+)'?", log)[0]
    assert float(first_rewards) == 0.0, first_rewards
    if init:
        assert "preference training uses a frozen 'ref' adapter" in log
    out = tmp_path / "out"
    assert json.loads((out / "adapter_config.json").read_text())["r"] == (32 if init else 16)
    assert not (out / "ref").exists()  # the reference is not part of what was trained


def test_rank_dropout_goes_on_the_model_trl_builds_for_dpo(tmp_path, demo_dir):
    recipe = dpo_recipe(tmp_path, demo_dir)
    trained = run_cli([sys.executable, "-m", "axolotl.cli.train", str(recipe)], cwd=tmp_path)
    log = trained.stdout + trained.stderr
    assert trained.returncode == 0, log[-4000:]
    assert "DropLoRA: rl: dpo builds the LoRA model in TRL's trainer" in log
    assert LAYERS_LOG.format(p=0.3, mode="element", rescale=True, kind="Linear") in log
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_adapter_droplora_without_the_plugin_line_says_what_to_add(tmp_path, demo_dir):
    recipe = write_recipe(tmp_path, demo_dir, plugins=None, droplora_rank_dropout=None, droplora_mask_mode=None)
    failed = run_cli([sys.executable, "-m", "axolotl.cli.train", str(recipe)], cwd=tmp_path)
    assert failed.returncode != 0
    assert (
        "Adapter 'droplora' is not built in and was not registered by a plugin. "
        "Add the plugin that provides this adapter to `plugins:`."
    ) in failed.stdout + failed.stderr
    assert not (tmp_path / "out").exists()


def test_bad_rank_dropout_fails_before_anything_is_written(tmp_path, demo_dir):
    recipe = write_recipe(tmp_path, demo_dir, droplora_rank_dropout=1.0)
    failed = run_cli(["axolotl", "train", str(recipe)], cwd=tmp_path)
    assert failed.returncode != 0
    assert "droplora_rank_dropout: rank dropout p must be a number in [0, 1)" in failed.stdout + failed.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("adapter, extra", [("droplora", {}), ("qlora", {"load_in_4bit": True})])
def test_sequence_masks_with_sample_packing_warn_that_a_packed_row_shares_one_mask(adapter, extra, caplog):
    from axolotl.utils.dict import DictDefault

    from axolotl_droplora.plugin import DropLoRAPlugin

    cfg = DictDefault({"adapter": adapter, "sample_packing": True, "droplora_mask_mode": "sequence", **extra})
    with caplog.at_level("WARNING"):
        DropLoRAPlugin().pre_model_load(cfg)
    assert "draws one mask per packed row, shared by every sequence packed into it" in caplog.text


BUILT_MODEL_VS_BASE = """
import sys, torch
from axolotl.cli.config import load_cfg
from axolotl.loaders import ModelLoader, load_tokenizer
from transformers import AutoModelForCausalLM
recipe, base_dir = sys.argv[1:]
cfg = load_cfg(recipe)
tokenizer = load_tokenizer(cfg)
model, _ = ModelLoader(cfg, tokenizer).load()  # Axolotl's loader, with the plugin's hooks
tokens = tokenizer(["What is 12 plus 30?", "What is 7 times 8?"], return_tensors="pt", padding=True).input_ids
with torch.no_grad():
    built = model.eval()(tokens).logits
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()(tokens).logits
print(f"max |built - base| = {(built - base).abs().max().item():.3e}")
"""


@pytest.mark.parametrize("init", ["milora", "pissa"])
def test_svd_init_model_as_axolotl_builds_it_computes_the_base_model(tmp_path, demo_dir, init):
    """W_p + s·B·A = W right after Axolotl's loader returns (Axolotl >= 0.20 re-draws lora_A
    after post_lora_load; an init done there would be undone)."""
    recipe = write_recipe(
        tmp_path,
        demo_dir,
        adapter="lora",
        droplora_rank_dropout=None,
        droplora_mask_mode=None,
        peft_init_lora_weights=init,
        lora_alpha=16,
        # the fused kernels patch attention in the train command only
        lora_qkv_kernel=False,
        lora_o_kernel=False,
        lora_mlp_kernel=False,
    )
    built = run_cli([sys.executable, "-c", BUILT_MODEL_VS_BASE, str(recipe), str(demo_dir / "model")], cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-3000:]
    difference = float(re.search(r"max \|built - base\| = (\S+)", built.stdout).group(1))
    assert difference < 1e-4, built.stdout


@pytest.mark.parametrize(
    "overrides",
    [
        {
            "adapter": "lora",
            "droplora_rank_dropout": None,
            "droplora_mask_mode": None,
            "peft_init_lora_weights": "milora",
        },
        {"peft_init_lora_weights": "milora"},
        {"peft_init_lora_weights": "pissa"},
    ],
    ids=["lora+milora", "droplora+milora", "droplora+pissa"],
)
def test_svd_init_at_learning_rate_0_saves_an_adapter_that_gives_back_the_base_model(tmp_path, demo_dir, overrides):
    import torch

    recipe = write_recipe(tmp_path, demo_dir, **overrides, lora_alpha=16, learning_rate=0.0, max_steps=2)
    trained = run_cli(["axolotl", "train", str(recipe)], cwd=tmp_path)
    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-4000:]
    out = tmp_path / "out"
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 32  # converted to 2r
    checked = run_cli(
        [
            sys.executable,
            "-c",
            VANILLA_PEFT_LOGITS,
            str(demo_dir / "model"),
            str(out),
            str(demo_dir / "model"),
            str(tmp_path / "logits.pt"),
            "32",
        ],
        cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stderr[-3000:]
    result = torch.load(tmp_path / "logits.pt")
    torch.testing.assert_close(result["peft"], result["base"], atol=1e-4, rtol=0)


def step_losses(log: str) -> list[float]:
    return [float(loss) for loss in re.findall(r"'loss': '?([0-9.]+)'?", log)]


@pytest.mark.parametrize(
    "overrides",
    [
        {"droplora_rank_dropout": 0.5, "droplora_mask_mode": "element"},
        {"droplora_mask_mode": "batch", "peft_init_lora_weights": "milora", "lora_alpha": 16},
    ],
    ids=["droplora", "droplora+milora"],
)
def test_a_run_resumed_from_a_checkpoint_logs_the_losses_of_an_uninterrupted_run(tmp_path, demo_dir, overrides):
    import shutil

    settings = dict(max_steps=8, logging_steps=1, save_strategy="steps", save_steps=4, **overrides)
    (tmp_path / "straight").mkdir()
    (tmp_path / "resumed").mkdir()
    straight = write_recipe(tmp_path / "straight", demo_dir, **settings)
    done = run_cli(["axolotl", "train", str(straight)], cwd=tmp_path / "straight")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    uninterrupted = step_losses(done.stdout + done.stderr)
    assert len(uninterrupted) == 8, uninterrupted

    # a preempted run: its output_dir holds only what the first 4 steps wrote
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight" / "out" / "checkpoint-4", resumed_dir / "out" / "checkpoint-4")
    recipe = write_recipe(resumed_dir, demo_dir, **settings, auto_resume_from_checkpoints=True)
    resumed = run_cli(["axolotl", "train", str(recipe)], cwd=resumed_dir)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-4000:]
    assert step_losses(log) == uninterrupted[4:]
    final = json.loads((resumed_dir / "out" / "adapter_config.json").read_text())
    if "peft_init_lora_weights" in overrides:
        assert "resuming from" in log and "same SVD init" in log
        assert final["r"] == 32  # converted for the original base, like the uninterrupted run's
        resumed_weights = load_file(resumed_dir / "out" / "adapter_model.safetensors")
        expected = load_file(tmp_path / "straight" / "out" / "adapter_model.safetensors")
        assert resumed_weights.keys() == expected.keys()
        assert all((resumed_weights[k] - expected[k]).abs().max() < 1e-5 for k in expected)
