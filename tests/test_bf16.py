"""bfloat16: training through TRL's SFTTrainer on CPU (`use_cpu=True, bf16=True`), and the SVD
inits' exact mode (`svd_init_exact`, axolotl_droplora/exact_init.py) on both routes.

Two bf16 setups, as users run them: "autocast" (float32 weights, TRL's bf16 autocast around the
forward) and "bf16-base" (the base loaded in bfloat16; PEFT keeps the adapter in float32, and
the autocast still runs the matmuls in bf16).

Tolerance for "the saved adapter merged vs unmerged" (MERGE_ATOL): merging rounds each entry of
W + s·B·A to bf16 (relative error up to 2^-9), which the unmerged model never does, and the two
then round every activation differently; on the 2-layer demo model that moves the logits by a
few bf16 ulps of the largest logit (|logit| < 8 here: ulp 2^-5 = 0.03). MERGE_ATOL is 4 such ulps.
Where both sides run the very same computation (vanilla PEFT vs the trained model in memory, on
the same base in the same dtype), they must be equal to the bit.
"""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from conftest import run_cli, tiny_base_model
from test_plugin import write_recipe
from test_trainer_callback import DroppedChannels, make_trainer
from transformers import AutoModelForCausalLM

from axolotl_droplora import MASK_MODES, DropLoRACallback, RankDropout, init_milora

P = 0.3  # 1/(1−p) = 1.428571… is not a bf16 number (bf16 rounds it to 1.4296875)
MERGE_ATOL = 4 * 2**-5
DID_TRAIN = 2**-5  # 4 steps moved some logit by more than a bf16 rounding step of the largest ones
TOKENS = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(5))
BF16 = {"autocast": {"bf16": True}, "bf16-base": {"bf16": True, "dtype": torch.bfloat16}}

VANILLA = """
import json, sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base_dir, jobs, tokens, out = sys.argv[1:]
tokens = torch.tensor(json.loads(tokens))
results = {}
# bf16=True training autocasts every forward: so does this, over the same base dtype
with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
    for adapter_dir, dtype in json.loads(jobs):
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=getattr(torch, dtype)).eval()
        base_logits = base(input_ids=tokens).logits
        model = PeftModel.from_pretrained(base, adapter_dir).eval()
        peft_logits = model(input_ids=tokens).logits
        merged_logits = model.merge_and_unload()(input_ids=tokens).logits
        results[adapter_dir] = {"base": base_logits, "peft": peft_logits, "merged": merged_logits}
torch.save(results, out)
assert not any(name.startswith("axolotl_droplora") for name in sys.modules), "imported us"
"""


def vanilla(base_dir, jobs: list[tuple[str, torch.dtype]], tmp_path) -> dict:
    """For each (adapter folder, base dtype): the logits of the base, of vanilla PEFT with the
    adapter and of PEFT's merged model, in one process that never imports this package."""
    jobs = [(str(adapter), str(dtype).removeprefix("torch.")) for adapter, dtype in jobs]
    done = run_cli(
        [
            sys.executable,
            "-c",
            VANILLA,
            str(base_dir),
            json.dumps(jobs),
            json.dumps(TOKENS.tolist()),
            str(tmp_path / "vanilla.pt"),
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp_path / "vanilla.pt")


@torch.no_grad()
def eval_logits(model, autocast: bool) -> torch.Tensor:
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return model(input_ids=TOKENS).logits


class FirstLayerActivations:
    """A·x before and after the rank dropout on the first lora_A, for every training forward."""

    def __init__(self, model):
        self.before, self.after = [], []
        lora_a = next(m for name, m in model.named_modules() if name.endswith("lora_A.default"))
        # prepend: runs before the rank dropout's hook, so it sees the unmasked A·x
        lora_a.register_forward_hook(lambda m, i, out: self.before.append(out) if m.training else None, prepend=True)
        lora_a.register_forward_hook(lambda m, i, out: self.after.append(out) if m.training else None)


def assert_masked_in_bf16_with_the_exact_scale(activations: FirstLayerActivations) -> float:
    """Check every masked forward; returns the share of (non-zero) A·x entries dropped."""
    # DoRA's weight-norm probe lora_A(I) is left unmasked: the rank dropout hands it back as it is
    pairs = [(a_x, masked) for a_x, masked in zip(activations.before, activations.after) if masked is not a_x]
    assert pairs, "no training forward was masked"
    dropped = seen = 0
    for a_x, masked in pairs:
        # the mask is drawn in the activation dtype: a float32 mask would promote the product
        assert a_x.dtype == masked.dtype == torch.bfloat16
        kept = masked != 0
        dropped += int((~kept & (a_x != 0)).sum())
        seen += int((a_x != 0).sum())
        expected = (a_x.float() * (1 / (1 - P))).to(torch.bfloat16)
        assert torch.equal(masked[kept], expected[kept]), "kept channels are not A·x/(1−p), correctly rounded"
    assert dropped > 0
    return dropped / seen


@pytest.mark.parametrize("rescale", [True, False], ids=["rescale", "no-rescale"])
@pytest.mark.parametrize("mask_mode", MASK_MODES)
def test_rank_dropout_on_bf16_activations_keeps_the_dtype_and_scales_by_exactly_1_over_1_minus_p(mask_mode, rescale):
    torch.manual_seed(0)  # batch mode draws one mask of 256 channels: its dropped share is ~0.3 ± 0.03
    a_x = torch.randn(4, 32, 256).to(torch.bfloat16)
    rank_dropout = RankDropout(P, mask_mode, rescale).train()
    masked = rank_dropout(a_x)
    assert masked.dtype == torch.bfloat16
    kept = masked != 0
    # with a bf16 mask holding 1/(1−p) (what F.dropout does on CPU) these differ by 0.08%
    expected = (a_x.float() / (1 - P)).to(torch.bfloat16) if rescale else a_x
    assert torch.equal(masked[kept], expected[kept])
    assert 0.2 < 1 - kept.float().mean() < 0.4
    # the mask's shape is the mode's: one draw per (sequence, channel) or per channel
    if mask_mode != "element":
        shared = kept.all(dim=1) | (~kept).all(dim=1)  # the same for all tokens of a sequence
        assert shared.all()
    if mask_mode == "batch":
        assert (kept == kept[:1, :1]).all()


# name -> (DropLoRACallback arguments, make_trainer arguments); every run trains 4 steps with
# TRL's bf16=True on CPU and saves its adapter
RUNS = {
    **{
        f"droplora-{mode}-{precision}": ({"mask_mode": mode}, BF16[precision])
        for mode in MASK_MODES
        for precision in BF16
    },
    "dora-bf16-base": ({"mask_mode": "element"}, {"lora_kwargs": {"use_dora": True}, **BF16["bf16-base"]}),
    **{
        f"pissa-{precision}": (
            {"mask_mode": "sequence"},
            {"alpha": 8, "lora_kwargs": {"init_lora_weights": "pissa"}, **BF16[precision]},
        )
        for precision in BF16
    },
    "milora-bf16-base": ({"mask_mode": "batch", "milora": True}, {"alpha": 8, **BF16["bf16-base"]}),
    "milora-exact-bf16-base": (
        {"mask_mode": "batch", "milora": True, "exact_init": True},
        {"alpha": 8, **BF16["bf16-base"]},
    ),
}


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory) -> dict:
    """Every run trained and saved, with what the tests check kept beside it; one vanilla PEFT
    process for all the saved adapters (it is most of the time a run would take)."""
    root = tmp_path_factory.mktemp("bf16")
    runs = {}
    for name, (callback_kwargs, trainer_kwargs) in RUNS.items():
        trainer = make_trainer(
            demo_dir,
            root / name,
            DropLoRACallback(rank_dropout=P, **callback_kwargs),
            output_dir=str(root / name),
            **trainer_kwargs,
        )
        run = {"at_start": eval_logits(trainer.model, autocast=False)}  # before accelerate's autocast
        run["activations"], run["counter"] = FirstLayerActivations(trainer.model), DroppedChannels(trainer.model)
        trainer.train()
        trainer.save_model()
        run["losses"] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        run["config"] = json.loads((root / name / "adapter_config.json").read_text())
        run["trained"] = eval_logits(trainer.model, autocast=True)  # as it trained: bf16=True autocasts
        run["dtype"] = trainer_kwargs.get("dtype", torch.float32)
        runs[name] = run
    got = vanilla(demo_dir / "model", [(root / name, run["dtype"]) for name, run in runs.items()], root)
    for name, run in runs.items():
        run.update(got[str(root / name)])
    base = AutoModelForCausalLM.from_pretrained(demo_dir / "model", dtype=torch.bfloat16)
    return {"runs": runs, "bf16_base": eval_logits(base, autocast=False)}


@pytest.mark.parametrize("name", list(RUNS))
def test_bf16_training_masks_in_the_activation_dtype_with_the_exact_scale(trained, name):
    """(With DoRA the mask acts on its activation path, not on the weight-norm probe lora_A(I).)"""
    run = trained["runs"][name]
    if name.startswith("dora"):  # per forward one probe and one activation (8 forwards: TRL
        # checkpoints gradients, so each of the 4 steps runs the forward twice)
        assert len(run["activations"].before) == 16
    first_layer = assert_masked_in_bf16_with_the_exact_scale(run["activations"])
    # DoRA: the counter would count the unmasked probes too; its element masks on the first
    # layer are plenty. Batch masks: 8 channels a draw, so all 10 layers' are counted
    dropped = first_layer if name.startswith("dora") else run["counter"].dropped / run["counter"].seen
    assert 0.2 < dropped < 0.4
    assert len(run["losses"]) == 4 and all(math.isfinite(loss) for loss in run["losses"])


@pytest.mark.parametrize("name", list(RUNS))
def test_the_saved_adapter_in_vanilla_peft_matches_its_merged_model_within_bf16_rounding(trained, name):
    run = trained["runs"][name]
    torch.testing.assert_close(run["merged"], run["peft"], atol=MERGE_ATOL, rtol=0)
    assert (run["peft"].float() - run["base"].float()).abs().max() > DID_TRAIN


@pytest.mark.parametrize("name", [name for name in RUNS if not name.startswith(("pissa", "milora-bf16"))])
def test_the_saved_adapter_on_the_original_base_is_the_trained_model_to_the_bit(trained, name):
    """Plain LoRA and DoRA trained on W itself, and MiLoRA with svd_init_exact: vanilla PEFT on the
    original base runs the very computation the trained model runs."""
    run = trained["runs"][name]
    # accelerate's bf16 wrapper returns the logits in float32, exactly converted from bf16
    assert torch.equal(run["peft"].float(), run["trained"])


@pytest.mark.parametrize("name", ["milora-bf16-base", "pissa-bf16-base", "pissa-autocast"])
def test_rounded_svd_inits_save_an_adapter_for_a_base_they_did_not_train_on(trained, name):
    """The papers' rounding (and PEFT's PiSSA): the fold at the end of training puts
    bf16(W_p + s·B0·A0) into the model, not W, so vanilla PEFT on W differs from the trained model
    (within bf16 rounding: in float32 weights, pissa-autocast, the difference is float32's)."""
    run = trained["runs"][name]
    assert run["config"]["r"] == 16 and run["config"]["init_lora_weights"] is True  # converted: 2r
    torch.testing.assert_close(run["peft"].float(), run["trained"], atol=MERGE_ATOL, rtol=0)
    if run["dtype"] == torch.bfloat16:
        assert not torch.equal(run["peft"].float(), run["trained"])


def test_milora_on_a_bf16_base_starts_from_the_base_to_the_bit_only_with_svd_init_exact(trained):
    runs, base = trained["runs"], trained["bf16_base"]
    assert torch.equal(runs["milora-exact-bf16-base"]["at_start"], base)  # W kept, B0·A0·x − B0·A0·x = 0
    # the default, the papers' rounding: W_p = bf16(W − s·B0·A0) loses part of the minor components
    assert not torch.equal(runs["milora-bf16-base"]["at_start"], base)
    for name in ("milora-bf16-base", "milora-exact-bf16-base"):
        assert (runs[name]["config"]["r"], runs[name]["config"]["lora_alpha"]) == (16, 16)  # rank 2r, same s


@pytest.mark.parametrize("exact", [False, True], ids=["rounded", "svd_init_exact"])
def test_the_adapter_changed_guard_in_bf16_stops_a_redraw_but_not_a_bf16_cast(demo_dir, tmp_path, exact):
    callback = DropLoRACallback(rank_dropout=None, milora=True, exact_init=exact)
    trainer = make_trainer(demo_dir, tmp_path, callback, alpha=8, max_steps=1, **BF16["bf16-base"])
    layer = trainer.model.base_model.model.model.layers[0].self_attn.q_proj
    for name in ("lora_A", "lora_B"):  # what DeepSpeed's bf16 does to the adapter: not a change
        weight = getattr(layer, name)["default"].weight
        weight.data = weight.data.to(torch.bfloat16)
    trainer.train()
    trainer = make_trainer(
        demo_dir,
        tmp_path,
        DropLoRACallback(rank_dropout=None, milora=True, exact_init=exact),
        alpha=8,
        max_steps=1,
        **BF16["bf16-base"],
    )
    torch.nn.init.kaiming_uniform_(
        trainer.model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight
    )
    with pytest.raises(RuntimeError, match="LoRA weights changed between the SVD init and the start of training"):
        trainer.train()


def test_exact_mode_is_refused_for_pissa_and_dora_naming_the_key():
    from peft import LoraConfig, get_peft_model

    with pytest.raises(ValueError, match=r"exact_init \(svd_init_exact\) needs milora=True"):
        DropLoRACallback(exact_init=True)
    model = get_peft_model(tiny_base_model(), LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    before = {name: p.clone() for name, p in model.named_parameters()}
    with pytest.raises(ValueError, match="svd_init_exact: true does not support DoRA"):
        init_milora(model, exact=True)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # nothing changed


def test_exact_mode_refuses_a_merged_layer_instead_of_computing_without_the_frozen_term():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_base_model(), LoraConfig(r=4, target_modules=["q_proj"])).eval()
    init_milora(model, exact=True)
    model.base_model.model.model.layers[0].self_attn.q_proj.merge()
    with pytest.raises(RuntimeError, match="svd_init_exact: this LoRA layer was merged"):
        model(input_ids=TOKENS % 128)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"peft_init_lora_weights": "pissa"},
            "`svd_init_exact: true` needs `peft_init_lora_weights: milora` (got "
            "pissa): PEFT's PiSSA init writes the rounded residual",
        ),
        ({"peft_init_lora_weights": "milora", "peft_use_dora": True}, "`svd_init_exact: true` does not support DoRA"),
        ({}, "`svd_init_exact: true` needs `peft_init_lora_weights: milora` (got None)"),
    ],
)
def test_axolotl_config_refuses_svd_init_exact_where_it_cannot_work(tmp_path, demo_dir, overrides, message):
    from test_args import error_of

    assert message in error_of(tmp_path, demo_dir, svd_init_exact=True, lora_alpha=16, **overrides)


BUILT_BF16_VS_BASE = """
import sys, torch
from axolotl.cli.config import load_cfg
from axolotl.loaders import ModelLoader, load_tokenizer
from transformers import AutoModelForCausalLM
recipe, base_dir = sys.argv[1:]
cfg = load_cfg(recipe)
tokenizer = load_tokenizer(cfg)
model, _ = ModelLoader(cfg, tokenizer).load()  # Axolotl's loader, with the plugin's hooks
assert model.get_input_embeddings().weight.dtype == torch.bfloat16, "base not loaded in bf16"
tokens = tokenizer(["What is 12 plus 30?", "What is 7 times 8?"], return_tensors="pt", padding=True).input_ids
with torch.no_grad():
    built = model.eval()(tokens).logits
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16).eval()(tokens).logits
print(f"identical: {torch.equal(built, base)}; max |built - base| = {(built - base).abs().max().item():.3e}")
"""


@pytest.mark.parametrize("exact", [False, True], ids=["rounded", "svd_init_exact"])
def test_axolotl_builds_a_bf16_milora_model_equal_to_the_base_only_in_exact_mode(tmp_path, demo_dir, exact):
    """`bfloat16: true` (Axolotl's non-AMP key) loads the base in bf16 without `bf16: true`, which
    needs a bf16-capable accelerator (on CPU: "Your setup doesn't support bf16/gpu"). Only the
    build can run here: `axolotl train` with `bfloat16: true` stops with that same error (Axolotl
    sets the trainer's bf16 from it and never sets use_cpu), so no bf16 lr-0 run on this route."""
    import re

    recipe = write_recipe(
        tmp_path,
        demo_dir,
        adapter="lora",
        droplora_rank_dropout=None,
        droplora_mask_mode=None,
        peft_init_lora_weights="milora",
        lora_alpha=16,
        bfloat16=True,
        svd_init_exact=exact or None,
        lora_qkv_kernel=False,
        lora_o_kernel=False,
        lora_mlp_kernel=False,
    )
    built = run_cli([sys.executable, "-c", BUILT_BF16_VS_BASE, str(recipe), str(demo_dir / "model")], cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-3000:]
    identical = re.search(r"identical: (\w+)", built.stdout).group(1)
    assert identical == str(exact), built.stdout
