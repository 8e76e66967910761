"""DropLoRACallback on TRL's SFTTrainer (axolotl_droplora/trainer_callback.py)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from axolotl_droplora import DropLoRACallback
from conftest import run_cli

TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


def records(demo_dir, split, n):
    lines = (demo_dir / "data" / f"{split}.jsonl").read_text().splitlines()[:n]
    return Dataset.from_list([{"text": f"{r['instruction']} {r['output']}"} for r in map(json.loads, lines)])


def make_trainer(demo_dir, tmp_path, callback, r=8, alpha=16, **config):
    settings = dict(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=4,
                    per_device_eval_batch_size=4, learning_rate=5e-3, logging_steps=1,
                    save_strategy="no", report_to=[], max_length=64, use_cpu=True, seed=0,
                    # TRL defaults to bf16 autocast, which accelerate wraps around forward for
                    # good: exact logit comparisons need float32 throughout
                    bf16=False)
    return SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(demo_dir / "model"),
        args=SFTConfig(**{**settings, **config}),
        train_dataset=records(demo_dir, "train", 32),
        eval_dataset=records(demo_dir, "heldout", 8),
        processing_class=AutoTokenizer.from_pretrained(demo_dir / "model"),
        peft_config=LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.05, target_modules=TARGETS),
        callbacks=[callback],
    )


class DroppedChannels:
    """Counts the rank channels zeroed by the rank dropout: A·x entries that came out exactly 0."""

    def __init__(self, model):
        self.dropped = self.seen = 0
        for name, module in model.named_modules():
            if name.endswith("lora_A.default"):
                module.register_forward_hook(self._count)  # runs after the rank dropout's hook

    def _count(self, module, inputs, output):
        self.dropped += int((output == 0).sum())
        self.seen += output.numel()


VANILLA_LOGITS = """
import sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base_dir, adapter_dir, tokens, out = sys.argv[1:]
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
with torch.no_grad():
    torch.save(model(input_ids=torch.tensor(eval(tokens))).logits, out)
assert not any(name.startswith("axolotl_droplora") for name in sys.modules), "imported us"
"""


def vanilla_peft_logits(base_dir, adapter_dir, tokens, tmp_path):
    done = run_cli([sys.executable, "-c", VANILLA_LOGITS, str(base_dir), str(adapter_dir),
                    str(tokens.tolist()), str(tmp_path / "vanilla.pt")], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp_path / "vanilla.pt")


def test_sft_trainer_trains_with_rank_dropout_evaluates_without_and_saves_plain_lora(demo_dir, tmp_path):
    trainer = make_trainer(demo_dir, tmp_path, DropLoRACallback(rank_dropout=0.5, mask_mode="sequence"))
    counter = DroppedChannels(trainer.model)
    trainer.train()
    assert counter.seen > 0 and 0.4 < counter.dropped / counter.seen < 0.6
    counter.dropped = counter.seen = 0
    metrics = trainer.evaluate()
    assert counter.seen > 0 and counter.dropped == 0 and metrics["eval_loss"] > 0
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)

    trainer.save_model()
    out = tmp_path / "out"
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    tokens = torch.tensor([[5, 17, 42, 99, 3, 250]])
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(input_ids=tokens).logits
    torch.testing.assert_close(vanilla_peft_logits(demo_dir / "model", out, tokens, tmp_path), expected,
                               atol=1e-5, rtol=0)


def test_milora_checkpoints_and_final_adapter_are_valid_on_the_original_base(demo_dir, tmp_path):
    callback = DropLoRACallback(rank_dropout=0.3, mask_mode="batch", milora=True)
    trainer = make_trainer(demo_dir, tmp_path, callback, r=8, alpha=8, save_strategy="steps", save_steps=2)
    base = AutoModelForCausalLM.from_pretrained(demo_dir / "model").eval()
    tokens = torch.tensor([[5, 17, 42, 99, 3, 250]])
    trainer.model.eval()
    with torch.no_grad():  # MiLoRA ran at the end of __init__: step 0 is the base model
        torch.testing.assert_close(trainer.model(input_ids=tokens).logits, base(input_ids=tokens).logits,
                                   atol=1e-5, rtol=0)
    trainer.train()
    trainer.save_model()
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(input_ids=tokens).logits

    out = tmp_path / "out"
    for adapter_dir in (out / "checkpoint-2", out / "checkpoint-4", out):
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 16, 16), adapter_dir
        assert all(w.shape[0] == 16 for k, w in load_file(adapter_dir / "adapter_model.safetensors").items()
                   if ".lora_A." in k)
    final = vanilla_peft_logits(demo_dir / "model", out, tokens, tmp_path)
    torch.testing.assert_close(final, expected, atol=1e-5, rtol=0)
    assert (final - base(input_ids=tokens).logits).abs().max() > 1e-4  # and it did train
    last_checkpoint = vanilla_peft_logits(demo_dir / "model", out / "checkpoint-4", tokens, tmp_path)
    torch.testing.assert_close(last_checkpoint, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rank_dropout": 1.5}, "rank dropout p must be a number in [0, 1)"),
        ({"mask_mode": "token"}, "unknown rank dropout mask mode 'token'"),
        ({"milora": True, "save_base": "merged"}, "save_base must be one of original, residual"),
    ],
)
def test_bad_arguments_fail_when_the_callback_is_made(kwargs, message):
    with pytest.raises(ValueError) as err:
        DropLoRACallback(**kwargs)
    assert message in str(err.value)


def test_a_trainer_without_lora_fails_at_construction(demo_dir, tmp_path):
    with pytest.raises(ValueError, match="rank dropout needs a PEFT LoRA model, but LlamaForCausalLM has no LoRA layer"):
        SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(demo_dir / "model"),
            args=SFTConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_length=64),
            train_dataset=records(demo_dir, "train", 8),
            processing_class=AutoTokenizer.from_pretrained(demo_dir / "model"),
            callbacks=[DropLoRACallback(rank_dropout=0.3)],
        )


def test_residual_save_base_keeps_the_adapter_as_trained_and_says_so(demo_dir, tmp_path, caplog):
    callback = DropLoRACallback(rank_dropout=None, milora=True, save_base="residual")
    with caplog.at_level("WARNING", logger="axolotl_droplora"):
        trainer = make_trainer(demo_dir, tmp_path, callback, r=8, alpha=8)
    assert "saving the residual form: the adapter is valid only on the residual base W_p" in caplog.text
    trainer.train()
    trainer.save_model()
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["r"] == 8  # not converted
    tokens = torch.tensor([[5, 17, 42, 99, 3, 250]])
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(input_ids=tokens).logits
    on_original = vanilla_peft_logits(demo_dir / "model", tmp_path / "out", tokens, tmp_path)
    assert (on_original - expected).abs().max() > 1e-3  # only valid on W_p, as the warning says
