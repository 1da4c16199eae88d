"""Fig. 6: caption fidelity under attention knockout, four panels (factual / counterfactual x video / audio)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from hooked_av.plot._style import MODALITY_COLORS, plt, save

PANELS = (("factual", "video"), ("factual", "audio"), ("counterfactual", "video"), ("counterfactual", "audio"))
SOURCE_LABELS = {"audio": "G↛A", "video": "G↛V"}
Z_95 = 1.959964  # normal quantile of a two-sided 95% interval


def curve_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean score per (setting, task, source, centre layer), with a 95% interval of the mean over samples
    (mean ± 1.96 standard errors; NaN for a single sample) and the number of samples."""
    n_of = (lambda s: s.sample_id.nunique()) if "sample_id" in scores else len
    rows = []
    for (setting, task, source, centre), group in scores.groupby(["setting", "task", "source", "centre_layer"],
                                                                 dropna=False, sort=True):
        mean, n = group.score.mean(), n_of(group)
        half = Z_95 * group.score.std(ddof=1) / np.sqrt(len(group)) if len(group) > 1 else np.nan
        rows.append((setting, task, source, centre, mean, mean - half, mean + half, n))
    return pd.DataFrame(rows, columns=["setting", "task", "source", "centre_layer", "mean", "ci_low", "ci_high",
                                       "n_samples"])


def plot_knockout_curves(scores: pd.DataFrame, path: str | Path, *, window: int, title: str | None = None) -> Path:
    """`scores`: a DataFrame with columns setting ("factual"/"counterfactual"), task ("video"/"audio": which
    fidelity is scored), source ("audio"/"video", or "none" for the unblocked baseline), centre_layer, score and
    (optional) sample_id: one row per sample, as `knockout_score_table` gives. `window`: the number of layers
    each knockout blocked (the sweep's `window`), stated on the figure.

    Curves show the mean score per centre layer with error bars (95% interval of the mean over samples); the
    baseline is a dashed line with its interval shaded. Each panel states its sample count; an empty panel says
    so. Writes the drawn table next to the PNG (`<path>.csv`: setting, task, source, centre_layer, mean, ci_low,
    ci_high, n_samples)."""
    table = curve_table(scores)
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6), sharey=True, layout="constrained")
    for ax, (letter, (setting, task)) in zip(axes, zip("ABCD", PANELS)):
        panel = table[(table.setting == setting) & (table.task == task)]
        draw_panel(ax, panel)
        n = int(panel.n_samples.max()) if len(panel) else 0
        ax.set_title(f"{letter}: {setting}, {task} understanding\n(n = {n} samples)", fontsize=9)
        ax.set_xlabel("centre layer of the window")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("fidelity (%)")
    handles = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=len(handles), frameon=False,
               fontsize=8)
    fig.suptitle(f"{title or 'Caption fidelity under attention knockout'}\nG↛X: generated tokens may not attend to "
                 f"X in a window of {window} layers centred on each layer; mean ± 95% CI over samples", fontsize=10)
    return save(fig, path, table)


def draw_panel(ax, panel: pd.DataFrame) -> None:
    if panel.empty:
        ax.text(0.5, 0.5, "no scores for this panel", ha="center", va="center", transform=ax.transAxes, fontsize=8,
                color="gray")
        return
    base = panel[panel.source == "none"]
    if len(base):
        row = base.iloc[0]
        ax.axhline(100 * row["mean"], ls="--", color="black", lw=1, label="no knockout (mean, 95% CI shaded)")
        if np.isfinite(row.ci_low):
            ax.axhspan(100 * row.ci_low, 100 * row.ci_high, color="black", alpha=0.08, lw=0)
    for source, curve in panel[panel.source != "none"].groupby("source"):
        mean = 100 * curve["mean"].to_numpy()
        err = 100 * np.stack([curve["mean"] - curve.ci_low, curve.ci_high - curve["mean"]]).clip(min=0)
        ax.errorbar(curve.centre_layer, mean, yerr=np.nan_to_num(err), marker="o", ms=3, capsize=2, elinewidth=0.8,
                    color=MODALITY_COLORS.get(source), label=SOURCE_LABELS.get(source, f"G↛{source}"))
