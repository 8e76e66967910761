"""Line charts of the regime study (curves per epoch, the r × p grid, spectra, channel removal)."""

from __future__ import annotations

from pathlib import Path

from .plots import _pyplot


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
                ax.fill_between(xs, [y - e for y, e in zip(ys, errors)], [y + e for y, e in zip(ys, errors)],
                                color=color, alpha=0.15, linewidth=0)
        ax.set_title(panel["title"], fontsize="medium")
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel(panel["ylabel"])
        if panel["series"]:
            ax.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
