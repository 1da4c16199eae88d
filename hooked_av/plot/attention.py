"""Fig. 4: mean attention from generated tokens to each modality, per layer."""

from __future__ import annotations

from pathlib import Path

from hooked_av.analysis.attention import AggregatedAttention, ModalityAttention
from matplotlib.ticker import MaxNLocator

from hooked_av.plot._style import MODALITY_COLORS, plt, save


def plot_attention_by_modality(result: ModalityAttention | AggregatedAttention, path: str | Path,
                               groups: tuple[str, ...] | None = None, title: str | None = None) -> Path:
    """One line per group over layers (with the confidence band of an aggregate), shares in percent."""
    if isinstance(result, ModalityAttention):
        mean, low, high = result.shares.numpy(), None, None
    else:
        mean, low, high = result.mean, result.ci_low, result.ci_high
    groups = groups or tuple(g for i, g in enumerate(result.groups) if mean[:, i].max() > 0)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name in groups:
        i = result.groups.index(name)
        color = MODALITY_COLORS.get(name)
        ax.plot(result.layers, 100 * mean[:, i], marker="o", ms=3, label=name, color=color)
        if low is not None:
            ax.fill_between(result.layers, 100 * low[:, i], 100 * high[:, i], alpha=0.2, color=color)
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("attention from generated tokens (%)")
    ax.set_ylim(0, 100)
    ax.legend(frameon=False)
    ax.set_title(title or "Attention by modality")
    return save(fig, path)
