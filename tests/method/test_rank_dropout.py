"""Semantics of the rank dropout on real PEFT LoRA models (axolotl_droplora/method/rank_dropout.py)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_base_model, tiny_lora_model

from axolotl_droplora import (
    MASK_MODES,
    install_rank_dropout,
    installed_rank_dropout,
    remove_rank_dropout,
)

TOKENS = torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(7))


def lora_a_modules(model):
    return [m for name, m in model.named_modules() if name.endswith("lora_A.default")]


class MaskRecorder:
    """Reads the mask each lora_A forward applied: (A·x after rank dropout) / (A·x)."""

    def __init__(self, model):
        self.masks: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(self._record) for m in lora_a_modules(model)]

    def _record(self, module, inputs, output):
        ratio = output / F.linear(inputs[0], module.weight)
        self.masks.append(torch.round(ratio.detach(), decimals=4))  # {0, 1/(1-p)} up to rounding

    def take(self):
        masks, self.masks = self.masks, []
        return masks


def logits(model, tokens=TOKENS):
    return model(input_ids=tokens).logits


def test_p_zero_is_bit_identical_to_lora_outputs_and_gradients():
    lora = tiny_lora_model(lora_dropout=0.1).train()
    droplora = copy.deepcopy(lora)
    install_rank_dropout(droplora, p=0.0)
    for model in (lora, droplora):
        torch.manual_seed(3)  # same input-dropout draws for both: p=0 must consume no randomness
        logits(model).sum().backward()
    torch.manual_seed(4)
    out_lora = logits(lora)
    torch.manual_seed(4)
    assert torch.equal(out_lora, logits(droplora))
    grads = {n: p.grad for n, p in lora.named_parameters() if p.requires_grad}
    for name, param in droplora.named_parameters():
        if param.requires_grad:
            assert torch.equal(param.grad, grads[name]), name


@pytest.mark.parametrize("mask_mode", MASK_MODES)
def test_eval_mode_is_plain_lora_and_equals_the_merged_model(mask_mode):
    lora = tiny_lora_model().eval()
    droplora = copy.deepcopy(lora)
    install_rank_dropout(droplora, p=0.5, mask_mode=mask_mode)
    droplora.train()
    logits(droplora)  # a training forward first must leave no state behind
    droplora.eval()
    out = logits(droplora)
    assert torch.equal(out, logits(lora))
    merged = copy.deepcopy(droplora).merge_and_unload()
    assert not installed_rank_dropout(merged)
    torch.testing.assert_close(logits(merged), out, atol=1e-5, rtol=0)


def test_element_mode_is_nn_dropout_on_a_x_from_the_same_seed():
    """The default reproduces the authors' lora_B(nn.Dropout(p)(lora_A(x))) draw for draw."""
    model = tiny_lora_model().train()
    install_rank_dropout(model, p=0.4)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(2, 5, 32)
    torch.manual_seed(11)
    got = layer(x)
    torch.manual_seed(11)
    dropout = torch.nn.Dropout(0.4)
    a_x = F.linear(x, layer.lora_A["default"].weight)  # not lora_A(x): that is hooked
    expected = layer.base_layer(x) + layer.lora_B["default"](dropout(a_x)) * layer.scaling["default"]
    assert torch.equal(got, expected)


@pytest.mark.parametrize("mask_mode", MASK_MODES)
@pytest.mark.parametrize("rescale", [True, False])
def test_training_masks_drop_p_of_channels_with_the_right_scale_and_shape(mask_mode, rescale):
    p = 0.3
    model = tiny_lora_model().train()
    install_rank_dropout(model, p=p, mask_mode=mask_mode, rescale=rescale)
    recorder = MaskRecorder(model)
    torch.manual_seed(0)
    for _ in range(20):
        logits(model)
    masks = recorder.take()
    kept_value = 1 / (1 - p) if rescale else 1.0
    values = torch.cat([m.flatten() for m in masks])
    assert torch.allclose(values[values > 0.5], torch.tensor(kept_value), atol=1e-4)
    assert torch.all((values.abs() < 1e-6) | ((values - kept_value).abs() < 1e-4))

    for mask in masks:  # (batch, tokens, r)
        if mask_mode == "sequence":
            assert torch.equal(mask, mask[:, :1, :].expand_as(mask))
        if mask_mode == "batch":
            assert torch.equal(mask, mask[:1, :1, :].expand_as(mask))
    # one independent draw per channel of each distinct mask: (sequence: per row, batch: per forward)
    draws = torch.cat([{"element": m, "sequence": m[:, 0, :], "batch": m[0, 0, :]}[mask_mode].flatten() for m in masks])
    dropped = (draws.abs() < 1e-6).float().mean().item()
    tolerance = 5 * (p * (1 - p) / draws.numel()) ** 0.5
    assert abs(dropped - p) < tolerance, (dropped, draws.numel())
    expected_mean = 1.0 if rescale else 1 - p
    assert abs(draws.mean().item() - expected_mean) < 5 * kept_value * tolerance


@pytest.mark.parametrize("mask_mode", MASK_MODES)
def test_masks_are_resampled_each_step_and_reproducible_from_the_seed(mask_mode):
    model = tiny_lora_model().train()
    install_rank_dropout(model, p=0.5, mask_mode=mask_mode)
    recorder = MaskRecorder(model)
    torch.manual_seed(123)
    logits(model)
    logits(model)
    masks = recorder.take()
    n_layers = len(masks) // 2
    first, second = masks[:n_layers], masks[n_layers:]
    assert any(not torch.equal(a, b) for a, b in zip(first, second))
    torch.manual_seed(123)
    logits(model)
    again = recorder.take()
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_batch_mode_dropped_channels_get_exactly_zero_gradient():
    model = tiny_lora_model().train()
    install_rank_dropout(model, p=0.5, mask_mode="batch")
    recorder = MaskRecorder(model)
    torch.manual_seed(5)
    logits(model).pow(2).mean().backward()
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "lora_B")]
    masks = recorder.take()
    assert len(masks) == len(layers)
    n_dropped = 0
    for layer, mask in zip(layers, masks):
        channel_kept = mask[0, 0, :] > 0.5
        grad_a = layer.lora_A["default"].weight.grad  # (r, d_in): row i is channel i
        grad_b = layer.lora_B["default"].weight.grad  # (d_out, r): column i is channel i
        assert torch.all(grad_a[~channel_kept] == 0) and torch.all(grad_b[:, ~channel_kept] == 0)
        assert torch.all(grad_a[channel_kept].abs().sum(1) > 0)
        n_dropped += int((~channel_kept).sum())
    assert n_dropped > 0


def test_install_keeps_parameter_names_and_can_be_reconfigured_and_removed():
    model = tiny_lora_model()
    names_before = list(model.state_dict())
    hooked = install_rank_dropout(model, p=0.5)
    assert len(hooked) == 10 and all(name.endswith("lora_A.default") for name in hooked)
    assert list(model.state_dict()) == names_before
    assert "RankDropout(p=0.5, mask_mode=element, rescale=True)" in repr(model)

    install_rank_dropout(model, p=0.2, mask_mode="batch")  # replaces, never stacks
    assert {(m.p, m.mask_mode) for m in installed_rank_dropout(model).values()} == {(0.2, "batch")}
    recorder = MaskRecorder(model)
    model.train()
    torch.manual_seed(0)
    logits(model)
    for mask in recorder.take():  # one stacked hook would give 1/0.8² and drop more
        assert set(mask.unique().tolist()) <= {0.0, 1.25}

    assert remove_rank_dropout(model) == 10
    assert installed_rank_dropout(model) == {}
    reference = tiny_lora_model().train()
    torch.manual_seed(1)
    expected = logits(reference)
    torch.manual_seed(1)
    assert torch.equal(logits(model), expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"p": 1.0}, "must be a number in [0, 1)"),
        ({"p": -0.1}, "must be a number in [0, 1)"),
        ({"p": "0.3"}, "must be a number in [0, 1)"),
        (
            {"p": 0.3, "mask_mode": "token"},
            "unknown rank dropout mask mode 'token'; choose one of element, sequence, batch",
        ),
    ],
)
def test_bad_arguments_are_refused_with_the_reason(kwargs, message):
    with pytest.raises(ValueError) as err:
        install_rank_dropout(tiny_lora_model(), **kwargs)
    assert message in str(err.value)


def test_a_model_without_lora_is_refused():
    with pytest.raises(ValueError, match="needs a PEFT LoRA model, but Linear has no LoRA layer"):
        install_rank_dropout(torch.nn.Linear(4, 4), p=0.3)


def test_trained_adapter_loads_in_vanilla_peft_with_the_same_logits(tmp_path):
    """Train a few steps with rank dropout, save, reload in a process that never imports us."""
    model = tiny_lora_model(seed=2, lora_dropout=0.05)
    install_rank_dropout(model, p=0.3, mask_mode="sequence")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(5):
        torch.manual_seed(step)
        loss = model(input_ids=TOKENS, labels=TOKENS).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    expected = logits(model)
    tiny_base_model(seed=2).save_pretrained(tmp_path / "base")
    model.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"

    script = f"""
import sys, json, torch
from transformers import LlamaForCausalLM
from peft import PeftModel
base = LlamaForCausalLM.from_pretrained({str(tmp_path / "base")!r})
model = PeftModel.from_pretrained(base, {str(tmp_path / "adapter")!r}).eval()
tokens = torch.tensor({TOKENS.tolist()})
torch.save(model(input_ids=tokens).logits, {str(tmp_path / "logits.pt")!r})
assert not any(m.startswith("axolotl_droplora") for m in sys.modules), "imported us"
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, atol=1e-5, rtol=0)


def test_dora_masks_the_activation_path_and_normalises_by_the_unmasked_weight():
    model = tiny_lora_model(use_dora=True).train()
    install_rank_dropout(model, p=0.5, mask_mode="batch")
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    recorder = MaskRecorder(model)
    x = torch.randn(2, 5, 32)
    torch.manual_seed(0)
    got = layer(x)
    probe, activation = recorder.take()  # DoRA first calls lora_A(I) for its weight norm
    assert torch.all(probe == 1)  # left unmasked
    mask = activation[0, 0]
    assert 0 < int((mask == 0).sum()) < 8
    a, b, s = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
    w = layer.base_layer.weight
    norm = torch.linalg.norm(w + s * b @ a, dim=1)  # of the unmasked weight, as in DoRA
    scale = layer.lora_magnitude_vector["default"].weight / norm
    expected = scale * (x @ w.T + s * (((x @ a.T) * mask) @ b.T))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert remove_rank_dropout(model) == 10
    assert not any(
        hook
        for m in model.modules()
        for hook in m._forward_pre_hooks.values()
        if type(hook).__name__ == "_TrackDoraInput"
    )


def test_rank_dropout_acts_inside_bitsandbytes_4bit_lora_layers(tmp_path):
    """QLoRA: PEFT's bnb Linear4bit LoRA layer calls lora_A too (bitsandbytes' CPU backend here;
    its 4-bit kernels fail on hidden size 32, so this model is twice as wide)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tiny_base_model(hidden_size=64).save_pretrained(tmp_path / "base")
    quantized = AutoModelForCausalLM.from_pretrained(
        tmp_path / "base",
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        ),
    )
    model = get_peft_model(
        quantized,
        LoraConfig(r=8, lora_alpha=16, init_lora_weights=False, target_modules=["q_proj", "v_proj", "down_proj"]),
    )
    layers = [m for m in model.modules() if type(m).__name__ == "Linear4bit" and hasattr(m, "lora_A")]
    assert len(layers) == 6
    assert len(install_rank_dropout(model, p=0.5, mask_mode="batch")) == 6
    recorder = MaskRecorder(model)
    model.eval()
    plain = logits(model)
    assert recorder.take()[0].eq(1).all()  # eval: no mask
    model.train()
    torch.manual_seed(0)
    logits(model).pow(2).mean().backward()
    masks = recorder.take()
    assert len(masks) == 6 and any((m[0, 0] == 0).any() for m in masks)
    for layer, mask in zip(layers, masks):  # dropped channels: no gradient into A in this step
        assert torch.all(layer.lora_A["default"].weight.grad[mask[0, 0] == 0] == 0)
    assert remove_rank_dropout(model) == 6
    torch.testing.assert_close(logits(model.eval()), plain)
