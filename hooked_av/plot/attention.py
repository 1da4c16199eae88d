"""Fig. 4: mean attention from generated tokens to each modality, per layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from hooked_av.analysis.attention import AggregatedAttention, ModalityAttention
from hooked_av.plot._style import MODALITY_COLORS, legend_right, plt, save


def plot_attention_by_modality(result: ModalityAttention | AggregatedAttention, path: str | Path,
                               groups: tuple[str, ...] | None = None, title: str | None = None) -> Path:
    """One line per group over layers, shares in percent; an aggregate adds its confidence band (labelled) and
    the sample count. Writes the drawn table next to the PNG (`<path>.csv`: layer, group, mean, ci_low, ci_high,
    n_samples, shares as fractions)."""
    table = as_table(result)
    groups = groups or tuple(g for g in result.groups if table[table.group == g]["mean"].max() > 0)
    table = table[table.group.isin(groups)]
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    for name in groups:
        rows = table[table.group == name]
        color = MODALITY_COLORS.get(name)
        ax.plot(rows.layer, 100 * rows["mean"], marker="o", ms=3, label=name, color=color)
        if isinstance(result, AggregatedAttention):
            ax.fill_between(rows.layer, 100 * rows.ci_low, 100 * rows.ci_high, alpha=0.2, color=color, lw=0)
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("attention from generated tokens (%)")
    ax.set_ylim(0, 100)
    handles, _ = ax.get_legend_handles_labels()
    if isinstance(result, AggregatedAttention):
        band = f"{100 * result.confidence:.0f}% CI"
        handles.append(Patch(color="gray", alpha=0.3, label=f"shaded: {band}\n(bootstrap over samples)"))
        subtitle = f"mean over n = {result.n_samples} samples, {band} shaded"
    else:
        subtitle = f"1 sample, {result.n_queries} generated-token queries"
    legend_right(ax, handles=handles)
    ax.set_title(f"{title or 'Attention by modality'}\n{subtitle}", fontsize=10)
    return save(fig, path, table)


def as_table(result: ModalityAttention | AggregatedAttention) -> pd.DataFrame:
    if isinstance(result, AggregatedAttention):
        return result.to_frame()
    shares = result.shares.numpy()
    return pd.DataFrame([(layer, group, float(shares[li, gi]), np.nan, np.nan, 1)
                         for li, layer in enumerate(result.layers) for gi, group in enumerate(result.groups)],
                        columns=["layer", "group", "mean", "ci_low", "ci_high", "n_samples"])
