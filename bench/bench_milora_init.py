"""MiLoRA init time: the authors' approach vs this package's, on the same weights, in one run.

    .venv/bin/python bench/bench_milora_init.py [--hidden 1024 --intermediate 2816 --layers 4 --rank 32]

authors:  per layer, in turn, `torch.linalg.svd(W.float())` (full_matrices=True, torch's default,
          as in their released code), then slice the r smallest triplets.
ours:     `axolotl_droplora.milora.minor_components` (what `init_milora` runs): see its docstring.

For each, prints wall time and the worst reconstruction error ‖W − W_p − s·B·A‖/‖W‖ over the
layers, and the worst relative error of the r smallest singular values against a float64 SVD.
"""

from __future__ import annotations

import argparse
import time

import torch

from axolotl_droplora.milora import minor_components


def llama_shaped_weights(hidden: int, intermediate: int, layers: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(hidden, hidden)] * 3 + [(intermediate, hidden), (hidden, intermediate)]  # q k v up down
    return [torch.randn(shape, generator=generator) / shape[1] ** 0.5 for _ in range(layers) for shape in shapes]


def authors(weights, rank):
    out = []
    for w in weights:
        u, s, vh = torch.linalg.svd(w.float())
        out.append((u[:, -rank:], s[-rank:], vh[-rank:, :]))
    return out


def errors(weights, components, rank, scaling=1.0):
    worst_reconstruction = worst_singular = 0.0
    for w, (u, s, vh) in zip(weights, components):
        root = torch.sqrt(s / scaling)
        b, a = u * root, root[:, None] * vh
        w_p = w - scaling * b @ a
        worst_reconstruction = max(worst_reconstruction, float(torch.linalg.norm(w - w_p - scaling * b @ a) / torch.linalg.norm(w)))
        reference = torch.linalg.svdvals(w.double())[-rank:]
        worst_singular = max(worst_singular, float(((s.double() - reference).abs() / reference).max()))
    return worst_reconstruction, worst_singular


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args()
    weights = llama_shaped_weights(args.hidden, args.intermediate, args.layers)
    print(f"{len(weights)} weights (q,k,v {args.hidden}², up/down {args.intermediate}×{args.hidden}), "
          f"r={args.rank}, torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    timings = {}
    for name, method in (("authors", authors), ("ours", minor_components)):
        start = time.perf_counter()
        components = method(weights, args.rank)
        timings[name] = time.perf_counter() - start
        reconstruction, singular = errors(weights, components, args.rank)
        print(f"{name:8s} {timings[name]:8.2f} s   reconstruction ≤ {reconstruction:.1e}   "
              f"minor singular values rel. error ≤ {singular:.1e}")
    print(f"speed-up (authors / ours): {timings['authors'] / timings['ours']:.2f}x")


if __name__ == "__main__":
    main()
