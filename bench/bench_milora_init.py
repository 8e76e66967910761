"""MiLoRA init time: the authors' approach vs this package's, on the same weights, in one run.

    .venv/bin/python bench/bench_milora_init.py [--hidden 1024 --intermediate 2816 --layers 4 --rank 32]
    python bench/bench_milora_init.py --device cuda --hidden 4096 --intermediate 11008 --layers 1

authors:  per layer, in turn, `torch.linalg.svd(W.float())` (full_matrices=True, torch's default,
          as in their released code), then slice the r smallest triplets.
ours:     `axolotl_droplora.milora.minor_components` (what `init_milora` runs): see its docstring.

For each, prints wall time and the worst reconstruction error ‖W − W_p − s·B·A‖/‖W‖ over the
layers, and the worst relative error of the r smallest singular values against a float64 SVD.
With `--device cuda` the weights live on the GPU and both methods run there (the authors' code
takes the SVD of each weight where the model is); each method first runs once on a small matrix,
so cuSOLVER's one-off start-up is timed for neither.
"""

from __future__ import annotations

import argparse
import time

import torch

from axolotl_droplora.method.milora import minor_components


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


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def errors(weights, components, references, scaling=1.0):
    worst_reconstruction = worst_singular = 0.0
    for w, (u, s, vh), reference in zip(weights, components, references):
        root = torch.sqrt(s / scaling)
        b, a = u * root, root[:, None] * vh
        w_p = w - scaling * b @ a
        worst_reconstruction = max(
            worst_reconstruction, float(torch.linalg.norm(w - w_p - scaling * b @ a) / torch.linalg.norm(w))
        )
        worst_singular = max(worst_singular, float(((s.double() - reference).abs() / reference).max()))
    return worst_reconstruction, worst_singular


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    weights = [w.to(args.device) for w in llama_shaped_weights(args.hidden, args.intermediate, args.layers)]
    where = (
        torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else f"{torch.get_num_threads()} threads"
    )
    print(
        f"{len(weights)} weights (q,k,v {args.hidden}², up/down {args.intermediate}×{args.hidden}), "
        f"r={args.rank}, torch {torch.__version__}, device {args.device} ({where})"
    )
    # the r smallest σ of a float64 SVD, the yardstick for both (once: slow at 7B shapes)
    references = [torch.linalg.svdvals(w.double())[-args.rank :] for w in weights]
    timings = {}
    for name, method in (("authors", authors), ("ours", minor_components)):
        if args.device.startswith("cuda"):
            method([torch.randn(64, 64, device=args.device)], 4)
        synchronize(args.device)
        start = time.perf_counter()
        components = method(weights, args.rank)
        synchronize(args.device)
        timings[name] = time.perf_counter() - start
        reconstruction, singular = errors(weights, components, references)
        print(
            f"{name:8s} {timings[name]:8.2f} s   reconstruction ≤ {reconstruction:.1e}   "
            f"minor singular values rel. error ≤ {singular:.1e}"
        )
    print(f"speed-up (authors / ours): {timings['authors'] / timings['ours']:.2f}x")


if __name__ == "__main__":
    main()
