"""MiLoRA's analyses (axolotl_droplora/analysis.py)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from PIL import Image

from axolotl_droplora.analysis import forgetting_loss, layer_analysis, subspace_similarity
from conftest import run_cli, tiny_base_model, tiny_lora_model


def basis(d, columns):
    return torch.eye(d, dtype=torch.float64)[:, columns]


@pytest.mark.parametrize(
    "a, b, phi",
    [
        (basis(6, [0, 1]), basis(6, [0, 1]), 1.0),  # the same subspace
        (basis(6, [0, 1]), basis(6, [1, 0]), 1.0),  # the same subspace, another basis
        (basis(6, [0, 1]), basis(6, [2, 3]), 0.0),  # orthogonal
        (basis(6, [0, 1]), basis(6, [0, 2]), 0.5),  # one of two directions shared
        (basis(4, [0]), torch.tensor([[0.6], [0.8], [0.0], [0.0]], dtype=torch.float64), 0.36),  # cos² 53°
    ],
)
def test_subspace_similarity_on_constructed_subspaces(a, b, phi):
    assert subspace_similarity(a, b) == pytest.approx(phi)


def test_a_delta_in_ws_minor_directions_is_bottom_aligned_and_amplified():
    d, r = 8, 2
    u, v = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))[0], torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))[0]
    sigma = torch.tensor([8.0, 7, 6, 5, 4, 3, 0.2, 0.1], dtype=torch.float64)
    w = u @ torch.diag(sigma) @ v.T
    delta = u[:, -r:] @ torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64)) @ v[:, -r:].T  # W's minor part
    a = layer_analysis(w, delta, r)
    assert a["phi_bottom"] == pytest.approx(1.0) and a["phi_top"] == pytest.approx(0.0, abs=1e-12)
    assert 0 < a["phi_random"] < 1
    assert a["W_on_W"] == pytest.approx(float(torch.linalg.vector_norm(sigma[:r])))
    assert a["W_on_delta"] == pytest.approx(float(torch.linalg.vector_norm(sigma[-r:])))
    assert a["delta_on_delta"] == pytest.approx(5 ** 0.5)
    assert a["amplification"] == pytest.approx(5 ** 0.5 / float(torch.linalg.vector_norm(sigma[-r:])))


def test_forgetting_loss_is_the_base_entropy_for_an_unchanged_model_and_grows_with_change():
    base = tiny_base_model(seed=1).eval()
    ids = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(0))
    probs = torch.softmax(base(input_ids=ids).logits.double(), -1)
    entropy = float(-(probs * probs.log()).sum(-1).mean())
    assert forgetting_loss(base, base, ids) == pytest.approx(entropy)
    tuned = tiny_lora_model(seed=1).eval()  # random non-zero B: a changed model
    assert forgetting_loss(base, tuned, ids) > entropy  # cross-entropy = entropy + KL


def test_analyze_command_writes_table_json_and_plot(tmp_path, demo_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(demo_dir / "model"),
                           LoraConfig(r=4, init_lora_weights=False, target_modules=["q_proj", "down_proj"]))
    model.save_pretrained(tmp_path / "adapter")
    (tmp_path / "text.txt").write_text("What is 12 plus 30? 12 + 30 = 42. The answer is 42.")
    ran = run_cli([sys.executable, "-m", "axolotl_droplora", "analyze", str(demo_dir / "model"), str(tmp_path / "adapter"),
                   "--layers", "1", "--modules", "q_proj,down_proj", "--text", str(tmp_path / "text.txt"),
                   "--out", str(tmp_path / "report")], cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "analysis.json").read_text())
    assert set(report["layers"]) == {"model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"}
    assert report["forgetting_loss"] > 0
    assert "| model.layers.1.self_attn.q_proj |" in ran.stdout and "Forgetting loss" in ran.stdout
    with Image.open(tmp_path / "report" / "analysis.png") as image:
        image.load()
        assert image.format == "PNG" and image.size == (600, 400)
    none = run_cli([sys.executable, "-m", "axolotl_droplora", "analyze", str(demo_dir / "model"), str(tmp_path / "adapter"),
                    "--modules", "v_proj", "--out", str(tmp_path / "r2")], cwd=tmp_path)
    assert none.returncode != 0 and "matches layers=None modules=['v_proj']" in none.stderr
