"""The MiLoRA paper's analyses of a trained adapter ΔW against its base weight W.

- Subspace similarity (MiLoRA §5.3, Appendix A.1, after Hu et al. 2021): for column-orthonormal
  A, B (d × r), φ(A, B) = ‖AᵀB‖²_F / r, in [0, 1]: 1 when they span the same subspace, 0 when
  orthogonal. Computed between the top-r left singular vectors of ΔW and the top-r, bottom-r
  and random r-dimensional left subspaces of W.
- Amplification (MiLoRA Table 5): with U, V the top-r left/right singular vectors of ΔW (or of
  W, or random), ‖UᵀWV‖_F and ‖UᵀΔWV‖_F; the factor is ‖UᵀΔWV‖_F / ‖UᵀWV‖_F for ΔW's own U, V.
- Forgetting loss (MiLoRA §5.4, after Kalajdzievski 2024): the next-token cross-entropy of the
  fine-tuned model against the base model's predicted distribution, −Σ p_base · log p_tuned,
  averaged over the tokens of a text.
"""

from __future__ import annotations

import torch

from ..eval.plots import grouped_bars
from ..method.lora_layers import lora_layers


def subspace_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """φ(A, B) = ‖AᵀB‖²_F / r for column-orthonormal A, B of shape (d, r)."""
    if a.shape != b.shape:
        raise ValueError(
            f"subspace_similarity needs two (d, r) matrices of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return float(torch.linalg.matrix_norm(a.double().T @ b.double()) ** 2 / a.shape[1])


def random_subspace(d: int, r: int, generator: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, r, generator=generator, dtype=torch.float64))
    return q


def layer_analysis(w: torch.Tensor, delta: torch.Tensor, r: int, seed: int = 0) -> dict:
    """φ against W's top / bottom / random subspaces, and the amplification table, for one layer."""
    generator = torch.Generator().manual_seed(seed)
    w, delta = w.double(), delta.double()
    u_w, _, vh_w = torch.linalg.svd(w, full_matrices=False)
    u_d, _, vh_d = torch.linalg.svd(delta, full_matrices=False)
    top_delta = u_d[:, :r]
    random_u = random_subspace(w.shape[0], r, generator)
    random_v = random_subspace(w.shape[1], r, generator)

    def projected(matrix, u, v):
        return float(torch.linalg.matrix_norm(u.T @ matrix @ v))

    w_on_delta = projected(w, u_d[:, :r], vh_d[:r].T)
    delta_on_delta = projected(delta, u_d[:, :r], vh_d[:r].T)
    return {
        "phi_top": subspace_similarity(top_delta, u_w[:, :r]),
        "phi_bottom": subspace_similarity(top_delta, u_w[:, -r:]),
        "phi_random": subspace_similarity(top_delta, random_u),
        "norm_W": float(torch.linalg.matrix_norm(w)),
        "W_on_W": projected(w, u_w[:, :r], vh_w[:r].T),
        "W_on_random": projected(w, random_u, random_v),
        "W_on_delta": w_on_delta,
        "delta_on_delta": delta_on_delta,
        "amplification": delta_on_delta / w_on_delta if w_on_delta > 0 else float("inf"),
    }


def adapter_deltas(model) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """{layer name: (W, ΔW = s·B·A, r)} for every LoRA layer of a loaded PeftModel."""

    deltas = {}
    for name, layer in lora_layers(model, "default"):
        with torch.no_grad():
            delta = layer.get_delta_weight("default")
        deltas[name.removeprefix("base_model.model.")] = (
            layer.get_base_layer().weight.detach(),
            delta,
            layer.r["default"],
        )
    return deltas


@torch.no_grad()
def forgetting_loss(base, tuned, input_ids: torch.Tensor) -> float:
    """Mean over next-token positions of −Σ_v p_base(v) · log p_tuned(v)."""
    p_base = torch.softmax(base(input_ids=input_ids).logits.double(), dim=-1)
    log_p_tuned = torch.log_softmax(tuned(input_ids=input_ids).logits.double(), dim=-1)
    return float(-(p_base * log_p_tuned).sum(-1).mean())


def analyze(
    base_dir: str,
    adapter_dir: str,
    layers: list[int] | None,
    modules: list[str] | None,
    text: str | None,
    out_dir,
    rank: int | None = None,
) -> dict:
    """Run every analysis on the chosen layers/modules; write analysis.json, .md and .png."""
    import json
    from pathlib import Path

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    chosen = {}
    for name, (w, delta, r) in adapter_deltas(tuned).items():
        layer = next((int(part) for part in name.split(".") if part.isdigit()), None)
        if (layers is None or layer in layers) and (modules is None or name.rsplit(".", 1)[-1] in modules):
            chosen[name] = layer_analysis(w, delta, rank or r)
    if not chosen:
        raise ValueError(f"no LoRA layer of {adapter_dir} matches layers={layers} modules={modules}")
    report = {"layers": chosen}
    if text:
        ids = AutoTokenizer.from_pretrained(base_dir)(text, return_tensors="pt").input_ids[:, :1024]
        report["forgetting_loss"] = forgetting_loss(base, tuned, ids)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "analysis.json").write_text(json.dumps(report, indent=1))
    lines = [
        "| layer | φ top | φ bottom | φ random | ‖W‖_F | ‖UᵀWV‖ (W's U,V) | (random) | (ΔW's) "
        "| ‖UᵀΔWV‖ (ΔW's) | amplification |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, a in chosen.items():
        lines.append(
            f"| {name} | {a['phi_top']:.3f} | {a['phi_bottom']:.3f} | {a['phi_random']:.3f} | "
            f"{a['norm_W']:.2f} | {a['W_on_W']:.2f} | {a['W_on_random']:.2f} | {a['W_on_delta']:.2f} | "
            f"{a['delta_on_delta']:.2f} | {a['amplification']:.2f} |"
        )
    if "forgetting_loss" in report:
        lines += [
            "",
            f"Forgetting loss (cross-entropy against the base model's predictions): {report['forgetting_loss']:.4f}",
        ]
    (out_dir / "analysis.md").write_text("\n".join(lines) + "\n")

    names = list(chosen)
    grouped_bars(
        out_dir / "analysis.png",
        [n.split("layers.")[-1] for n in names],
        {
            "φ vs W's top r": [chosen[n]["phi_top"] for n in names],
            "φ vs W's bottom r": [chosen[n]["phi_bottom"] for n in names],
            "φ vs a random subspace": [chosen[n]["phi_random"] for n in names],
        },
        "subspace similarity φ with ΔW's top r",
    )
    return report
