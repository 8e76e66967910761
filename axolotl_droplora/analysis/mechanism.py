"""Why (or whether) rank dropout changes what LoRA learns: analyses of any trained LoRA adapter.

- Spectrum of ΔW = s·B·A per layer (s = lora_alpha / r, or / √r with rsLoRA), from the r × r
  core of QR factors of B and Aᵀ (exact, no d × d SVD), and its entropy-based effective rank
  (Roy & Vetterli 2007): exp(−Σ pᵢ log pᵢ) with pᵢ = σᵢ / Σσ; between 1 and rank(ΔW) ≤ r.
  Rank dropout trains every channel to work without the others, which predicts a flatter
  spectrum (higher effective rank) than LoRA's.
- Channel removal at inference: the held-out answer loss (answer_loss.py) when k = round(f·r)
  of the r rank channels of every LoRA layer are zeroed (rows of A; each layer its own random
  channels, several draws), without rescaling. If a DropLoRA adapter is an "implicit ensemble"
  of sub-adapters, its loss rises less with f than LoRA's. f = 0 is the unchanged model.
- Similarity of the ΔW subspaces learned from different seeds: φ(U₁, U₂) = ‖U₁ᵀU₂‖²_F / k of
  the top-k left singular vectors (analysis.subspace_similarity), per layer, averaged over
  layers and seed pairs; a random pair of k-dimensional subspaces of ℝᵈ gives about k / d.

These read adapters with plain A, B (LoRA, DropLoRA). The analyses do not apply to DoRA, and for
PiSSA / MiLoRA runs the saved factors are the change only once converted for the original base.
"""

from __future__ import annotations

import itertools
import json
import statistics
from contextlib import contextmanager
from pathlib import Path

import torch

from ..eval.evaluate import read_records
from ..method.lora_layers import lora_layers
from ..method.lora_layers import scaling as lora_scaling
from .spectra import subspace_similarity

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)


def adapter_factors(adapter_dir: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """{layer: (A (r × d_in), B (d_out × r), scaling s)} from a saved PEFT LoRA adapter folder."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        raise ValueError(f"{config_file} is missing: {adapter_dir} is not a saved PEFT adapter")
    config = json.loads(config_file.read_text())
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise ValueError(f"{config_file}: {key} is set; these analyses need one r and lora_alpha for all layers")
    if config.get("use_dora"):
        raise ValueError(f"{config_file}: use_dora is true; ΔW of DoRA is not s·B·A, so these analyses do not apply")
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    factors = {}
    for key, a in weights.items():
        if key.endswith(".lora_A.weight"):
            name = key.removesuffix(".lora_A.weight").removeprefix("base_model.model.")
            b = weights[key.replace(".lora_A.", ".lora_B.")]
            r = a.shape[0]
            factors[name] = (a, b, lora_scaling(config["lora_alpha"], r, config.get("use_rslora", False)))
    if not factors:
        raise ValueError(f"{adapter_dir}/adapter_model.safetensors holds no lora_A weights")
    return factors


def model_factors(model, adapter: str = "default") -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """adapter_factors for a loaded PeftModel."""

    return {
        name.removeprefix("base_model.model."): (
            layer.lora_A[adapter].weight.detach(),
            layer.lora_B[adapter].weight.detach(),
            layer.scaling[adapter],
        )
        for name, layer in lora_layers(model, adapter)
    }


def delta_svd(a: torch.Tensor, b: torch.Tensor, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(left singular vectors (d_out × r), singular values (r,)) of s·B·A, descending."""
    q_b, r_b = torch.linalg.qr(b.double())
    q_a, r_a = torch.linalg.qr(a.double().T)
    u, sigma, _ = torch.linalg.svd(scaling * r_b @ r_a.T)
    return q_b @ u, sigma


def effective_rank(singular_values: torch.Tensor) -> float:
    """exp of the entropy of σ / Σσ (Roy & Vetterli 2007); 0 for ΔW = 0."""
    total = float(singular_values.sum())
    if total <= 0:
        return 0.0
    p = singular_values.double() / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def spectra(factors: dict) -> dict[str, dict]:
    """{layer: {"singular_values": [...], "effective_rank": x, "r": r}} of ΔW."""
    out = {}
    for name, (a, b, scaling) in factors.items():
        _, sigma = delta_svd(a, b, scaling)
        out[name] = {
            "singular_values": [float(f"{s:.6g}") for s in sigma.tolist()],
            "effective_rank": effective_rank(sigma),
            "r": a.shape[0],
        }
    return out


def cross_seed_similarity(factor_sets: list[dict], ks: tuple[int, ...] | None = None) -> dict[str, float]:
    """{"k=K": mean φ over layers and seed pairs of the top-K left singular subspaces of ΔW}."""
    if len(factor_sets) < 2:
        raise ValueError("cross_seed_similarity needs the adapters of at least 2 seeds")
    layers = sorted(set.intersection(*(set(f) for f in factor_sets)))
    if not layers:
        raise ValueError("the adapters share no LoRA layer")
    bases = [{name: delta_svd(*factors[name])[0] for name in layers} for factors in factor_sets]
    r = min(bases[0][layers[0]].shape[1], *(basis[name].shape[1] for basis in bases for name in layers))
    ks = ks or tuple(sorted({1, max(1, r // 2), r}))
    return {
        f"k={k}": statistics.fmean(
            subspace_similarity(one[name][:, :k], two[name][:, :k])
            for one, two in itertools.combinations(bases, 2)
            for name in layers
        )
        for k in ks
    }


@contextmanager
def channels_removed(model, fraction: float, generator: torch.Generator, adapter: str = "default"):
    """Zero k = round(fraction · r) random rank channels (rows of A) in every LoRA layer; restore after."""

    if not 0 <= fraction < 1:
        raise ValueError(f"fraction of rank channels removed must be in [0, 1), got {fraction}")
    saved = []
    try:
        with torch.no_grad():
            for _, layer in lora_layers(model, adapter):
                weight = layer.lora_A[adapter].weight
                k = round(fraction * weight.shape[0])
                channels = torch.randperm(weight.shape[0], generator=generator)[:k]
                saved.append((weight, channels, weight[channels].clone()))
                weight[channels] = 0
        yield sum(len(channels) for _, channels, _ in saved)
    finally:
        with torch.no_grad():
            for weight, channels, values in saved:
                weight[channels] = values


def pruning_curve(
    model,
    tokenizer,
    prompts: list[str],
    answers: list[str],
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
    draws: int = 3,
    seed: int = 0,
    batch_size: int = 32,
    full: float | None = None,
) -> dict:
    """Held-out answer loss of the full adapter (`full`, scored unless given) and, per fraction,
    of each draw with channels removed."""
    from ..eval.answer_loss import answer_nll

    if full is None:
        full = statistics.fmean(answer_nll(model, tokenizer, prompts, answers, batch_size))
    generator = torch.Generator().manual_seed(seed)
    curve = []
    for fraction in fractions:
        losses = []
        for _ in range(draws):
            with channels_removed(model, fraction, generator):
                losses.append(statistics.fmean(answer_nll(model, tokenizer, prompts, answers, batch_size)))
        curve.append({"fraction": fraction, "losses": losses})
    return {"full": full, "curve": curve}


def summarise_spectra(layer_spectra: dict) -> dict:
    """Mean effective rank over layers and the mean spectrum normalised by each layer's σ₁."""
    ranks = [s["effective_rank"] for s in layer_spectra.values()]
    normalised = [
        [v / s["singular_values"][0] if s["singular_values"][0] > 0 else 0.0 for v in s["singular_values"]]
        for s in layer_spectra.values()
    ]
    return {
        "effective_rank_mean": statistics.fmean(ranks),
        "effective_rank_min": min(ranks),
        "effective_rank_max": max(ranks),
        "r": max(s["r"] for s in layer_spectra.values()),
        "normalised_spectrum": [statistics.fmean(column) for column in zip(*normalised)],
    }


def load_questions(path: str | Path, limit: int | None = None) -> list[dict]:
    """Records with `instruction` and `output` from a JSON list or JSONL file (the demo's held-out set)."""
    path = Path(path)
    try:
        records = read_records(path)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON{'' if path.suffix == '.json' else 'L'}: {err}") from None
    for index, record in enumerate(records[:limit]):
        missing = [key for key in ("instruction", "output") if key not in record]
        if missing:
            raise ValueError(
                f"{path}, record {index}: missing {', '.join(missing)} (each question needs 'instruction' and 'output')"
            )
    if not records:
        raise ValueError(f"{path} holds no questions")
    return records[:limit]


def analyze_adapters(
    base_model: str,
    adapter_dirs: list[str],
    questions_file: str | Path,
    out_dir: str | Path,
    prompt: str,
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
    draws: int = 3,
    limit: int | None = 200,
    seed: int = 0,
) -> dict:
    """Spectra, channel-removal curve and (for ≥ 2 adapters) similarity across them; writes
    mechanism.json, mechanism.md, spectra.png and pruning.png in out_dir."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..eval.plots import line_panels

    records = load_questions(questions_file, limit)
    prompts = [prompt.format(instruction=r["instruction"]) for r in records]
    answers = [" " + r["output"] for r in records]
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    factor_sets = [adapter_factors(a) for a in adapter_dirs]  # every adapter checked before a model is loaded
    report = {"adapters": {}, "questions": len(records), "draws": draws}
    for adapter, factors in zip(adapter_dirs, factor_sets):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), adapter).eval()
        layer_spectra = spectra(factors)
        report["adapters"][str(adapter)] = {
            "spectra": summarise_spectra(layer_spectra),
            "layers": layer_spectra,
            "pruning": pruning_curve(model, tokenizer, prompts, answers, fractions, draws, seed),
        }
    if len(factor_sets) > 1:
        report["cross_adapter_phi"] = cross_seed_similarity(factor_sets)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "mechanism.json").write_text(json.dumps(report, indent=1))
    lines = [
        "| adapter | r | effective rank (mean, min–max over layers) | answer loss | "
        + " | ".join(f"{f:.0%} removed" for f in fractions)
        + " |",
        "|---|---|---|---|" + "---|" * len(fractions),
    ]
    for adapter, a in report["adapters"].items():
        s, p = a["spectra"], a["pruning"]
        lines.append(
            f"| {adapter} | {s['r']} | {s['effective_rank_mean']:.2f} ({s['effective_rank_min']:.2f}–"
            f"{s['effective_rank_max']:.2f}) | {p['full']:.4f} | "
            + " | ".join(f"{statistics.fmean(c['losses']):.4f}" for c in p["curve"])
            + " |"
        )
    lines += [
        "",
        f"Answer loss: mean NLL per answer token on {len(records)} questions; with k = round(share · r) "
        f"random rank channels of every layer zeroed, mean of {draws} draws.",
    ]
    if "cross_adapter_phi" in report:
        lines += [
            "",
            "Subspace similarity φ of ΔW's top-k left singular vectors, mean over layers and adapter "
            "pairs: " + ", ".join(f"{k}: {v:.3f}" for k, v in report["cross_adapter_phi"].items()),
        ]
    (out_dir / "mechanism.md").write_text("\n".join(lines) + "\n")
    names = {adapter: "/".join(Path(adapter).parts[-2:]) for adapter in report["adapters"]}
    line_panels(
        out_dir / "spectra.png",
        [
            {
                "title": "singular values of ΔW / σ₁, mean over layers",
                "xlabel": "index",
                "ylabel": "σᵢ / σ₁",
                "series": {
                    names[a]: (
                        list(range(1, len(v["spectra"]["normalised_spectrum"]) + 1)),
                        v["spectra"]["normalised_spectrum"],
                        None,
                    )
                    for a, v in report["adapters"].items()
                },
            }
        ],
    )
    line_panels(
        out_dir / "pruning.png",
        [
            {
                "title": "rank channels removed at inference",
                "xlabel": "share removed",
                "ylabel": "answer loss (nats/token)",
                "series": {
                    names[a]: (
                        [0.0] + list(fractions),
                        [v["pruning"]["full"]] + [statistics.fmean(c["losses"]) for c in v["pruning"]["curve"]],
                        None,
                    )
                    for a, v in report["adapters"].items()
                },
            }
        ],
    )
    return report
