"""Fig. 6: caption fidelity under attention knockout, four panels (factual / counterfactual x video / audio)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.ticker import MaxNLocator

from hooked_av.plot._style import MODALITY_COLORS, plt, save

PANELS = (("factual", "video"), ("factual", "audio"), ("counterfactual", "video"), ("counterfactual", "audio"))
SOURCE_LABELS = {"audio": "G↛A", "video": "G↛V"}


def plot_knockout_curves(scores, path: str | Path, title: str | None = None) -> Path:
    """`scores`: a DataFrame with columns setting ("factual"/"counterfactual"), task ("video"/"audio": which
    fidelity is scored), source ("audio"/"video", or "none" for the unblocked baseline), centre_layer and score
    (one row per sample, or already averaged). Lines show the mean score per centre layer; the baseline is a
    dashed line."""
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.2), sharey=True)
    for ax, (letter, (setting, task)) in zip(axes, zip("ABCD", PANELS)):
        panel = scores[(scores.setting == setting) & (scores.task == task)]
        base = panel[panel.source == "none"].score
        if len(base):
            ax.axhline(100 * base.mean(), ls="--", color="black", lw=1, label="no knockout")
        for source, rows in panel[panel.source != "none"].groupby("source"):
            curve = rows.groupby("centre_layer").score.mean()
            ax.plot(curve.index, 100 * curve.values, marker="o", ms=3, color=MODALITY_COLORS.get(source),
                    label=SOURCE_LABELS.get(source, f"G↛{source}"))
        ax.set_title(f"{letter}: {setting}, {task} understanding", fontsize=9)
        ax.set_xlabel("centre layer of the window")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("fidelity (%)")
    axes[-1].legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title)
    return save(fig, path)
