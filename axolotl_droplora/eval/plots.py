"""The charts this package draws, written to PNG files (600 × 400 px at least)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "charts need matplotlib, which training does not: pip install 'axolotl-droplora[eval]'"
        ) from None

    matplotlib.use("Agg")  # files only: no display on the machines this runs on
    import matplotlib.pyplot as plt

    return plt


def grouped_bars(path: str | Path, categories: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    """One group of bars per category, one bar per series in each group, with a legend."""
    plt = _pyplot()
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


def bars_and_curves(
    path: str | Path,
    labels: list[str],
    means: list[float],
    stds: list[float],
    bar_label: str,
    curves: dict[str, list[float]],
    curve_label: str,
) -> None:
    """Left: one bar per label with a ±std error bar. Right: one line per label over steps."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5), dpi=100)
    colors = [plt.cm.tab10(i % 10) for i in range(len(labels))]
    left.bar(range(len(labels)), means, yerr=stds, capsize=4, color=colors)
    left.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
    left.set_ylabel(bar_label)
    for color, label in zip(colors, labels):
        values = curves.get(label, [])
        right.plot(range(1, len(values) + 1), values, label=label, color=color, linewidth=1.2)
    right.set_xlabel("training step")
    right.set_ylabel(curve_label)
    right.set_yscale("log")
    right.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def line_panels(path: str | Path, panels: list[dict]) -> None:
    """One chart per panel side by side; a panel is {"title", "xlabel", "ylabel", "series":
    {label: (xs, ys, errors or None)}}; errors are drawn as a band around the line."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(max(6.5, 6.5 * len(panels)), 4.5), dpi=100, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for k, (label, (xs, ys, errors)) in enumerate(panel["series"].items()):
            color = plt.cm.tab10(k % 10)
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=label, color=color)
            if errors is not None:
                ax.fill_between(
                    xs,
                    [y - e for y, e in zip(ys, errors)],
                    [y + e for y, e in zip(ys, errors)],
                    color=color,
                    alpha=0.15,
                    linewidth=0,
                )
        ax.set_title(panel["title"], fontsize="medium")
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel(panel["ylabel"])
        if panel["series"]:
            ax.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
