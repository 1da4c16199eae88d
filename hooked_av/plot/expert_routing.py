"""Expert routing by modality: per group of tokens a layer x expert heatmap of routing shares, and the overlap of
the experts audio and video tokens use, per layer."""

from __future__ import annotations

from pathlib import Path

from matplotlib.ticker import MaxNLocator

from hooked_av.analysis.expert_routing import ExpertRouting
from hooked_av.plot._style import plt, save


def plot_expert_routing(result: ExpertRouting, path: str | Path, groups: tuple[str, ...] | None = None,
                        overlap: tuple[str, str] = ("audio", "video"), title: str | None = None) -> Path:
    """Heatmaps of the fraction of each group's tokens routed to each expert (rows: layers), then the histogram
    intersection of two groups' expert distributions per layer (when both groups have tokens); the long table
    (`result.to_frame()`) is written next to it as CSV."""
    groups = groups or tuple(g for g, n in zip(result.groups, result.n_tokens) if n > 0)
    with_overlap = all(result.n_tokens[result.groups.index(g)] > 0 for g in overlap)
    n_panels = len(groups) + int(with_overlap)
    fig, axes = plt.subplots(1, n_panels, figsize=(3.2 * n_panels, 3.4), squeeze=False)
    vmax = max(float(result.share(g).max()) for g in groups)
    for ax, group in zip(axes[0], groups):
        image = ax.imshow(result.share(group).numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=vmax,
                          interpolation="nearest")
        ax.set_title(f"{group} ({result.n_tokens[result.groups.index(group)]} tokens)", fontsize=9)
        ax.set_xlabel("expert")
        rows = range(0, len(result.layers), max(1, len(result.layers) // 12))
        ax.set_yticks(list(rows), labels=[result.layers[i] for i in rows])
    axes[0][0].set_ylabel("layer")
    fig.colorbar(image, ax=axes[0][:len(groups)].tolist(), label="share of the group's tokens", shrink=0.8)
    if with_overlap:
        ax = axes[0][-1]
        ax.plot(result.overlap(*overlap).numpy(), result.layers, marker="o", ms=3, color="tab:red")
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.set_xlabel(f"{overlap[0]}-{overlap[1]} overlap")
        ax.set_ylabel("layer")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title or "Expert routing by modality", fontsize=11)
    return save(fig, path, result.to_frame())
