"""Fig. 7: how far the AV model's tokens shift from the base VLM's distribution."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from hooked_av.plot._style import legend_right, plt, save

BUCKET_COLORS = {"unshifted": "tab:gray", "marginal": "tab:olive", "shifted": "tab:red"}
COLUMNS = ["group", "n_tokens", "n_samples", *BUCKET_COLORS, "kl_base_av", "kl_av_base", "median_base_rank"]


def plot_token_shift(summaries: Mapping[str, Mapping[str, float]], path: str | Path, title: str | None = None) -> Path:
    """`summaries`: name -> the summary of `aggregate_shift` (e.g. {"all tokens": ..., "sound-event tokens": ...}).
    Left: stacked bucket fractions; right: mean KL divergence in both directions. Each group is labelled with its
    token count; a group with no tokens is marked "no tokens" rather than drawn as zero. Legends sit outside the
    axes. Writes the drawn table next to the PNG (`<path>.csv`: one row per group)."""
    table = pd.DataFrame([{"group": name, **summary} for name, summary in summaries.items()],
                         columns=COLUMNS).fillna({"n_samples": np.nan})
    xs = np.arange(len(table))
    names = [f"{g}\n(n = {int(n)} tokens)" for g, n in zip(table.group, table.n_tokens)]
    empty = (table.n_tokens == 0).to_numpy()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), layout="constrained")
    bottom = np.zeros(len(table))
    for bucket, color in BUCKET_COLORS.items():
        values = 100 * table[bucket].fillna(0).to_numpy()
        left.bar(xs, values, bottom=bottom, color=color, label=bucket)
        for i, v in enumerate(values):
            if v >= 5:
                left.text(i, bottom[i] + v / 2, f"{v:.1f}%", ha="center", va="center", fontsize=8, color="white")
        bottom += values
    left.set_ylabel("tokens (%)")
    left.set_ylim(0, 100)
    left.set_title("base rank η of the AV model's token: 1 / 2-3 / >3", fontsize=9)
    legend_right(left, fontsize=8)
    width = 0.38
    right.bar(xs - width / 2, table.kl_base_av.fillna(0), width, label="KL(base ‖ AV)")
    right.bar(xs + width / 2, table.kl_av_base.fillna(0), width, label="KL(AV ‖ base)")
    right.set_ylabel("mean KL (nats)")
    right.set_title("distribution shift per token", fontsize=9)
    legend_right(right, fontsize=8)
    for ax in (left, right):
        ax.set_xticks(xs, names, fontsize=8)
        for i in np.flatnonzero(empty):
            ax.text(i, 0.5, "no tokens", ha="center", va="center", rotation=90, color="gray", fontsize=8,
                    transform=ax.get_xaxis_transform())
    if title:
        fig.suptitle(title)
    return save(fig, path, table)
