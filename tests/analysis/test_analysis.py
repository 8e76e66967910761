"""MiLoRA's analyses (axolotl_droplora/analysis/spectra.py)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import run_cli, tiny_base_model, tiny_lora_model
from PIL import Image

from axolotl_droplora.analysis.spectra import forgetting_loss, layer_analysis, subspace_similarity


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
    u, v = (
        torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))[0],
        torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))[0],
    )
    sigma = torch.tensor([8.0, 7, 6, 5, 4, 3, 0.2, 0.1], dtype=torch.float64)
    w = u @ torch.diag(sigma) @ v.T
    delta = u[:, -r:] @ torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64)) @ v[:, -r:].T  # W's minor part
    a = layer_analysis(w, delta, r)
    assert a["phi_bottom"] == pytest.approx(1.0) and a["phi_top"] == pytest.approx(0.0, abs=1e-12)
    assert 0 < a["phi_random"] < 1
    assert a["W_on_W"] == pytest.approx(float(torch.linalg.vector_norm(sigma[:r])))
    assert a["W_on_delta"] == pytest.approx(float(torch.linalg.vector_norm(sigma[-r:])))
    assert a["delta_on_delta"] == pytest.approx(5**0.5)
    assert a["amplification"] == pytest.approx(5**0.5 / float(torch.linalg.vector_norm(sigma[-r:])))


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

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(demo_dir / "model"),
        LoraConfig(r=4, init_lora_weights=False, target_modules=["q_proj", "down_proj"]),
    )
    model.save_pretrained(tmp_path / "adapter")
    (tmp_path / "text.txt").write_text("What is 12 plus 30? 12 + 30 = 42. The answer is 42.")
    ran = run_cli(
        [
            sys.executable,
            "-m",
            "axolotl_droplora",
            "analyze",
            str(demo_dir / "model"),
            str(tmp_path / "adapter"),
            "--layers",
            "1",
            "--modules",
            "q_proj,down_proj",
            "--text",
            str(tmp_path / "text.txt"),
            "--out",
            str(tmp_path / "report"),
        ],
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "analysis.json").read_text())
    assert set(report["layers"]) == {"model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"}
    assert report["forgetting_loss"] > 0
    assert "| model.layers.1.self_attn.q_proj |" in ran.stdout and "Forgetting loss" in ran.stdout
    with Image.open(tmp_path / "report" / "analysis.png") as image:
        image.load()
        assert image.format == "PNG" and image.size == (600, 400)
    none = run_cli(
        [
            sys.executable,
            "-m",
            "axolotl_droplora",
            "analyze",
            str(demo_dir / "model"),
            str(tmp_path / "adapter"),
            "--modules",
            "v_proj",
            "--out",
            str(tmp_path / "r2"),
        ],
        cwd=tmp_path,
    )
    assert none.returncode != 0 and "matches layers=None modules=['v_proj']" in none.stderr


# ---- analysis/mechanism.py: spectra, effective rank, channel removal, similarity across seeds ----

from axolotl_droplora.analysis.mechanism import (  # noqa: E402
    channels_removed,
    cross_seed_similarity,
    delta_svd,
    effective_rank,
    model_factors,
    spectra,
)
from axolotl_droplora.eval.answer_loss import answer_nll  # noqa: E402


@pytest.mark.parametrize(
    "sigma, expected",
    [
        ([1.0, 1.0, 1.0, 1.0], 4.0),  # a flat spectrum: all r directions count
        ([3.0, 0.0, 0.0], 1.0),  # rank one
        ([2.0, 1.0, 1.0], 2**1.5),  # p = ½, ¼, ¼: H = 1.5 ln 2
        ([0.0, 0.0], 0.0),  # ΔW = 0
    ],
)
def test_effective_rank_on_known_spectra(sigma, expected):
    assert effective_rank(torch.tensor(sigma)) == pytest.approx(expected)


def test_delta_svd_is_the_svd_of_s_b_a_from_its_factors():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 20, generator=generator), torch.randn(12, 4, generator=generator)
    u, sigma = delta_svd(a, b, 0.5)
    full = torch.linalg.svdvals(0.5 * b.double() @ a.double())
    assert torch.allclose(sigma, full[:4]) and bool((sigma[:-1] >= sigma[1:]).all())
    assert torch.allclose(u.T @ u, torch.eye(4, dtype=torch.float64), atol=1e-10)
    delta = 0.5 * b.double() @ a.double()
    assert torch.allclose(u @ (u.T @ delta), delta, atol=1e-10)  # ΔW lies in span(U)


def test_similarity_across_seeds_is_one_for_the_same_adapter_and_zero_for_disjoint_subspaces():
    a = torch.randn(2, 8, dtype=torch.float64)
    b1, b2 = torch.eye(6, dtype=torch.float64)[:, :2], torch.eye(6, dtype=torch.float64)[:, 2:4]
    same = cross_seed_similarity([{"l": (a, b1, 1.0)}, {"l": (a, 3 * b1, 2.0)}])
    assert same == {"k=1": pytest.approx(1.0), "k=2": pytest.approx(1.0)}
    apart = cross_seed_similarity([{"l": (a, b1, 1.0)}, {"l": (a, b2, 1.0)}])
    assert apart == {"k=1": pytest.approx(0.0, abs=1e-12), "k=2": pytest.approx(0.0, abs=1e-12)}
    with pytest.raises(ValueError, match="at least 2 seeds"):
        cross_seed_similarity([{"l": (a, b1, 1.0)}])


def test_answer_loss_is_the_mean_nll_of_the_answer_tokens_whatever_the_batch(demo_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_dir / "model")
    model = AutoModelForCausalLM.from_pretrained(demo_dir / "model").eval()
    prompts = ["Question: What is 2 plus 3?\nAnswer:", "Question: What is 12 times 4?\nAnswer:", "Q:"]
    answers = [" 2 + 3 = 5. The answer is: 5", " 12 * 4 = 48. The answer is: 48", " 7"]
    batched = answer_nll(model, tokenizer, prompts, answers, batch_size=3)
    assert batched == pytest.approx(answer_nll(model, tokenizer, prompts, answers, batch_size=1), rel=1e-5)
    ids = (
        tokenizer(prompts[2]).input_ids
        + tokenizer(answers[2], add_special_tokens=False).input_ids
        + [tokenizer.eos_token_id]
    )
    n_prompt = len(tokenizer(prompts[2]).input_ids)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    by_hand = -sum(float(log_probs[i - 1, ids[i]]) for i in range(n_prompt, len(ids))) / (len(ids) - n_prompt)
    assert batched[2] == pytest.approx(by_hand, rel=1e-5)
    assert model.training is False
    with pytest.raises(ValueError, match="3 prompts but 2 answers"):
        answer_nll(model, tokenizer, prompts, answers[:2])


def _train_tiny_adapter(demo_dir, seed: int, steps: int = 8):
    """A LoRA r=4 adapter on the demo model after a few Adam steps on demo answers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolotl_droplora.eval.answer_loss import encode

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(demo_dir / "model")
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(demo_dir / "model"),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
    )
    records = [json.loads(line) for line in (demo_dir / "data" / "train.jsonl").read_text().splitlines()[:8]]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(steps):
        record = records[step % len(records)]
        ids, n_prompt = encode(tokenizer, f"Question: {record['instruction']}\nAnswer:", " " + record["output"])
        labels = torch.tensor([[-100] * n_prompt + ids[n_prompt:]])
        loss = model(input_ids=torch.tensor([ids]), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), tokenizer


def test_mechanism_on_a_trained_adapter_removal_and_effective_rank(demo_dir):
    model, tokenizer = _train_tiny_adapter(demo_dir, seed=0)
    records = json.loads((demo_dir / "heldout" / "gsm8k" / "test.json").read_text())[:6]
    prompts = [f"Question: {r['instruction']}\nAnswer:" for r in records]
    answers = [" " + r["output"] for r in records]
    full = answer_nll(model, tokenizer, prompts, answers)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}
    with channels_removed(model, 0.0, torch.Generator().manual_seed(0)) as removed:
        assert removed == 0 and answer_nll(model, tokenizer, prompts, answers) == full  # exactly the full model
    with channels_removed(model, 0.5, torch.Generator().manual_seed(0)) as removed:
        assert removed == 2 * 3 * 2  # 2 of 4 channels in each of 3 modules × 2 layers
        zero_rows = [int((p.abs().sum(1) == 0).sum()) for n, p in model.named_parameters() if "lora_A" in n]
        assert zero_rows == [2] * 6
        assert answer_nll(model, tokenizer, prompts, answers) != full
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora_A" in n)  # restored
    with pytest.raises(ValueError, match=r"must be in \[0, 1\), got 1.0"):
        with channels_removed(model, 1.0, torch.Generator()):
            pass
    layers = spectra(model_factors(model))
    assert len(layers) == 6
    for layer in layers.values():
        assert 1.0 <= layer["effective_rank"] <= layer["r"] == 4
        assert len(layer["singular_values"]) == 4 and layer["singular_values"][0] > 0


def test_mechanism_command_writes_spectra_removal_curve_similarity_and_plots(tmp_path, demo_dir):
    for seed in (0, 1):
        model, _ = _train_tiny_adapter(demo_dir, seed=seed, steps=4)
        model.save_pretrained(tmp_path / "runs" / f"seed{seed}")
    ran = run_cli(
        [
            sys.executable,
            "-m",
            "axolotl_droplora",
            "mechanism",
            str(demo_dir / "model"),
            str(tmp_path / "runs" / "seed0"),
            str(tmp_path / "runs" / "seed1"),
            "--questions",
            str(demo_dir / "data" / "heldout.jsonl"),
            "--limit",
            "5",
            "--fractions",
            "0.25,0.5",
            "--draws",
            "2",
            "--out",
            str(tmp_path / "mech"),
        ],
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    report = json.loads((tmp_path / "mech" / "mechanism.json").read_text())
    assert report["questions"] == 5 and len(report["adapters"]) == 2
    for adapter in report["adapters"].values():
        assert [len(c["losses"]) for c in adapter["pruning"]["curve"]] == [2, 2]
        assert 1 <= adapter["spectra"]["effective_rank_mean"] <= 4
    assert set(report["cross_adapter_phi"]) == {"k=1", "k=2", "k=4"}
    assert all(0 <= v <= 1 for v in report["cross_adapter_phi"].values())
    assert "runs/seed0 | 4 |" in ran.stdout and "Subspace similarity" in ran.stdout
    for figure in ("spectra.png", "pruning.png"):
        with Image.open(tmp_path / "mech" / figure) as image:
            assert image.format == "PNG" and image.size[0] >= 600

    (tmp_path / "bad.jsonl").write_text(json.dumps({"instruction": "What is 1 plus 1?"}) + "\n")
    bad = run_cli(
        [
            sys.executable,
            "-m",
            "axolotl_droplora",
            "mechanism",
            str(demo_dir / "model"),
            str(tmp_path / "runs" / "seed0"),
            "--questions",
            str(tmp_path / "bad.jsonl"),
            "--out",
            str(tmp_path / "m2"),
        ],
        cwd=tmp_path,
    )
    assert bad.returncode != 0 and "record 0: missing output" in bad.stderr
