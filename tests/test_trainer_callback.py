"""DropLoRACallback on TRL's SFTTrainer (axolotl_droplora/trainer_callback.py)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import run_cli
from datasets import Dataset
from peft import LoraConfig
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from axolotl_droplora import DropLoRACallback

TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


def records(demo_dir, split, n):
    lines = (demo_dir / "data" / f"{split}.jsonl").read_text().splitlines()[:n]
    return Dataset.from_list([{"text": f"{r['instruction']} {r['output']}"} for r in map(json.loads, lines)])


def make_trainer(demo_dir, tmp_path, callback, r=8, alpha=16, dtype=None, lora_kwargs=None, **config):
    settings = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=5e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        max_length=64,
        use_cpu=True,
        seed=0,
        # TRL defaults to bf16 autocast, which accelerate wraps around forward for
        # good: exact logit comparisons need float32 throughout
        bf16=False,
    )
    return SFTTrainer(
        # dtype=torch.bfloat16: a bf16-loaded base (test_bf16.py); None: the checkpoint's float32
        model=AutoModelForCausalLM.from_pretrained(demo_dir / "model", **({"dtype": dtype} if dtype else {})),
        args=SFTConfig(**{**settings, **config}),
        train_dataset=records(demo_dir, "train", 32),
        eval_dataset=records(demo_dir, "heldout", 8),
        processing_class=AutoTokenizer.from_pretrained(demo_dir / "model"),
        peft_config=LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.05, target_modules=TARGETS, **(lora_kwargs or {})),
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
    done = run_cli(
        [
            sys.executable,
            "-c",
            VANILLA_LOGITS,
            str(base_dir),
            str(adapter_dir),
            str(tokens.tolist()),
            str(tmp_path / "vanilla.pt"),
        ],
        cwd=tmp_path,
    )
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
    torch.testing.assert_close(
        vanilla_peft_logits(demo_dir / "model", out, tokens, tmp_path), expected, atol=1e-5, rtol=0
    )


def test_milora_checkpoints_and_final_adapter_are_valid_on_the_original_base(demo_dir, tmp_path):
    callback = DropLoRACallback(rank_dropout=0.3, mask_mode="batch", milora=True)
    trainer = make_trainer(demo_dir, tmp_path, callback, r=8, alpha=8, save_strategy="steps", save_steps=2)
    base = AutoModelForCausalLM.from_pretrained(demo_dir / "model").eval()
    tokens = torch.tensor([[5, 17, 42, 99, 3, 250]])
    trainer.model.eval()
    with torch.no_grad():  # MiLoRA ran at the end of __init__: step 0 is the base model
        torch.testing.assert_close(
            trainer.model(input_ids=tokens).logits, base(input_ids=tokens).logits, atol=1e-5, rtol=0
        )
    trainer.train()
    trainer.save_model()
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(input_ids=tokens).logits

    out = tmp_path / "out"
    for adapter_dir in (out / "checkpoint-2", out / "checkpoint-4", out):
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 16, 16), adapter_dir
        assert all(
            w.shape[0] == 16 for k, w in load_file(adapter_dir / "adapter_model.safetensors").items() if ".lora_A." in k
        )
    final = vanilla_peft_logits(demo_dir / "model", out, tokens, tmp_path)
    torch.testing.assert_close(final, expected, atol=1e-5, rtol=0)
    assert (final - base(input_ids=tokens).logits).abs().max() > 1e-4  # and it did train
    last_checkpoint = vanilla_peft_logits(demo_dir / "model", out / "checkpoint-4", tokens, tmp_path)
    torch.testing.assert_close(last_checkpoint, expected, atol=1e-5, rtol=0)


def test_training_stops_if_something_redraws_the_adapter_after_milora(demo_dir, tmp_path):
    """What Axolotl >= 0.20 would do to an init run in post_lora_load: re-draw lora_A."""
    trainer = make_trainer(demo_dir, tmp_path, DropLoRACallback(rank_dropout=None, milora=True), r=8, alpha=8)
    layer = trainer.model.base_model.model.model.layers[0].self_attn.q_proj
    torch.nn.init.kaiming_uniform_(layer.lora_A["default"].weight)
    with pytest.raises(RuntimeError, match="LoRA weights changed between the SVD init and the start of training"):
        trainer.train()
    assert not (tmp_path / "out" / "adapter_config.json").exists()


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
    with pytest.raises(
        ValueError, match="rank dropout needs a PEFT LoRA model, but LlamaForCausalLM has no LoRA layer"
    ):
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


TWO_PROCESS_SFT = """
import json, os, sys
import torch.distributed as dist
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer
from axolotl_droplora import DropLoRACallback, installed_rank_dropout

model_dir, out, mask_mode = sys.argv[1:]
masks = []  # which rank channels the first layer's mask dropped, per training forward
# rows of equal length: every rank draws its random numbers in tensors of the same shapes
data = Dataset.from_list([{"text": f"What is {a} plus {b}? The answer is {a + b}."}
                          for a in range(10, 40) for b in range(10, 20)])
trainer = SFTTrainer(
    model=AutoModelForCausalLM.from_pretrained(model_dir),
    processing_class=AutoTokenizer.from_pretrained(model_dir),
    args=SFTConfig(output_dir=out, max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3,
                   report_to=[], max_length=32, use_cpu=True, ddp_backend="gloo", bf16=False,
                   gradient_checkpointing=False, save_strategy="steps", save_steps=2, seed=0),
    train_dataset=data,
    peft_config=LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]),
    callbacks=[DropLoRACallback(rank_dropout=0.5, mask_mode=mask_mode, milora=True)],
)
first_layer = next(iter(installed_rank_dropout(trainer.model).values()))
first_layer.register_forward_hook(
    lambda module, inputs, output: masks.append((output == 0).flatten()[:256].tolist()) if module.training else None)
trainer.train()
trainer.save_model()
rank = dist.get_rank()
with open(f"{out}/masks-{rank}.json", "w") as f:
    json.dump({"world": dist.get_world_size(), "masks": masks}, f)
"""


@pytest.mark.parametrize("mask_mode", ["element", "batch"])
def test_two_processes_share_masks_and_save_one_converted_adapter(demo_dir, tmp_path, mask_mode):
    """torchrun with gloo on CPU, TRL route, MiLoRA + rank dropout (the Axolotl route cannot run
    several processes on CPU: docs/scaling.md says why)."""
    (tmp_path / "train.py").write_text(TWO_PROCESS_SFT)
    out = tmp_path / "out"
    done = run_cli(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "train.py",
            str(demo_dir / "model"),
            str(out),
            mask_mode,
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    ranks = [json.loads((out / f"masks-{rank}.json").read_text()) for rank in (0, 1)]
    assert all(r["world"] == 2 and len(r["masks"]) == 4 for r in ranks)  # both ranks trained 4 steps
    # the same seed on every rank: each step's mask is the same on both ranks, and new each step
    assert ranks[0]["masks"] == ranks[1]["masks"]
    assert len({tuple(mask) for mask in ranks[0]["masks"]}) == 4
    for adapter_dir in (out, out / "checkpoint-2", out / "checkpoint-4"):  # converted once: 2r, not 4r
        assert json.loads((adapter_dir / "adapter_config.json").read_text())["r"] == 16, adapter_dir
    assert json.loads((out / "checkpoint-4" / "default" / "adapter_config.json").read_text())["r"] == 8
    tokens = torch.tensor([[5, 17, 42, 99, 3, 250]])
    base = AutoModelForCausalLM.from_pretrained(demo_dir / "model").eval()
    with torch.no_grad():
        trained = vanilla_peft_logits(demo_dir / "model", out, tokens, tmp_path)
        assert (trained - base(input_ids=tokens).logits).abs().max() > 1e-4


def test_gradient_checkpointing_recomputes_each_step_with_that_steps_mask(demo_dir, tmp_path):
    from axolotl_droplora import installed_rank_dropout

    trainer = make_trainer(
        demo_dir, tmp_path, DropLoRACallback(rank_dropout=0.5, mask_mode="batch"), gradient_checkpointing=True
    )
    masks = []
    first_layer = next(iter(installed_rank_dropout(trainer.model).values()))
    first_layer.register_forward_hook(
        lambda module, inputs, output: masks.append(tuple((output[0, 0] == 0).tolist())) if module.training else None
    )
    trainer.train()
    assert len(masks) == 8  # 4 steps, each forward run again in the backward pass
    assert all(masks[2 * step] == masks[2 * step + 1] for step in range(4))
    assert len(set(masks)) == 4


@pytest.mark.parametrize("milora", [True, False], ids=["milora", "pissa"])
def test_svd_init_with_fsdp_cpu_ram_efficient_loading_is_refused_before_the_init_on_every_rank(tmp_path, milora):
    """What the Trainer hands the callback at the end of its __init__: the arguments that ask for
    weights on rank 0 only, and (on every rank but 0) a model whose weights are on meta."""
    from conftest import tiny_base_model
    from peft import get_peft_model
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        fsdp=True,
        fsdp_config={"fsdp_version": 2, "cpu_ram_efficient_loading": True},
    )
    model = get_peft_model(
        tiny_base_model(), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=True if milora else "pissa")
    )
    before = {name: p.clone() for name, p in model.named_parameters()}
    callback = DropLoRACallback(rank_dropout=0.3, milora=milora)
    with pytest.raises(
        ValueError,
        match=rf"{'MiLoRA' if milora else 'PiSSA'} with fsdp_config\['cpu_ram_efficient_"
        r"loading'\] = True: off rank 0 the base weights are empty",
    ):
        callback.on_init_end(args, None, None, model=model)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # nothing ran
    assert callback.initial_adapter is None
