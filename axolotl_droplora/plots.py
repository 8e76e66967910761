"""The one chart this package draws: grouped bars, written to a PNG (600 × 400 px at least)."""

from __future__ import annotations

from pathlib import Path


def grouped_bars(path: str | Path, categories: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    """One group of bars per category, one bar per series in each group, with a legend."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on the machines this runs on
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(max(6.0, 0.6 * len(categories) * max(1, len(series))), 4), dpi=100)
    width = 0.8 / max(1, len(series))
    for k, (label, values) in enumerate(series.items()):
        axes.bar([i + k * width for i in range(len(categories))], values, width, label=label)
    axes.set_xticks([i + 0.4 - width / 2 for i in range(len(categories))], categories, rotation=30, ha="right")
    axes.set_ylabel(ylabel)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
