"""Fig. 2: audio (and video) understanding, factual vs counterfactual samples, per prompt."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from hooked_av.plot._style import legend_right, plt, save
from hooked_av.plot.knockout import Z_95

SETTING_COLORS = {"factual": "tab:green", "counterfactual": "tab:red"}
MODALITY_TITLES = {"audio": "audio fidelity of the caption", "video": "video fidelity of the caption",
                   "latent_audio": "latent audio (logit-lens words)"}


def fidelity_table(score_rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Mean score per (modality, prompt, setting) of caption or word-set score rows (`load_scores`), with a 95%
    interval of the mean (± 1.96 standard errors; NaN for one sample) and the sample count. Knockout-sweep rows
    (they carry a source) and failure records are left out."""
    scores = pd.DataFrame([{"modality": r["modality"], "prompt": r["prompt"],
                            "setting": "counterfactual" if r.get("counterfactual") else "factual",
                            "sample_id": r["sample_id"], "score": r["score"]}
                           for r in score_rows if r.get("score") is not None and "source" not in r],
                          columns=["modality", "prompt", "setting", "sample_id", "score"])
    rows = []
    for (modality, prompt, setting), group in scores.groupby(["modality", "prompt", "setting"], sort=True):
        mean, n = float(group.score.mean()), len(group)
        half = Z_95 * group.score.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan
        rows.append((modality, prompt, setting, mean, mean - half, mean + half, n))
    return pd.DataFrame(rows, columns=["modality", "prompt", "setting", "mean", "ci_low", "ci_high", "n_samples"])


def plot_fidelity(table: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """One panel per modality scored (audio, video, latent audio), a pair of bars per prompt: factual and
    counterfactual mean score in percent with 95% error bars, each labelled with its value and sample count.
    `table`: as `fidelity_table` gives. Writes the table next to the PNG (`<path>.csv`)."""
    modalities = [m for m in MODALITY_TITLES if m in set(table.modality)] or ["audio"]
    fig, axes = plt.subplots(1, len(modalities), figsize=(4.2 * len(modalities) + 1.5, 3.8), squeeze=False,
                             sharey=True, layout="constrained")
    for ax, modality in zip(axes[0], modalities):
        panel = table[table.modality == modality]
        prompts = sorted(set(panel.prompt))
        width = 0.38
        for offset, (setting, color) in zip((-width / 2, width / 2), SETTING_COLORS.items()):
            for x, prompt in enumerate(prompts):
                cell = panel[(panel.prompt == prompt) & (panel.setting == setting)]
                if cell.empty:
                    continue
                row = cell.iloc[0]
                err = 100 * np.array([[row["mean"] - row.ci_low], [row.ci_high - row["mean"]]]).clip(min=0)
                ax.bar(x + offset, 100 * row["mean"], width, color=color, yerr=np.nan_to_num(err), capsize=3)
                top = 100 * max(row["mean"], row.ci_high if np.isfinite(row.ci_high) else 0)
                ax.text(x + offset, min(top, 88) + 1.5, f"{100 * row['mean']:.0f}%\nn={int(row.n_samples)}",
                        ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(prompts)), [textwrap.fill(p, 16) for p in prompts], fontsize=8)
        ax.set_xlim(-0.6, max(len(prompts), 1) - 0.4)
        ax.set_title(MODALITY_TITLES[modality], fontsize=9)
        if panel.empty:
            ax.text(0.5, 0.5, "no scores", ha="center", va="center", transform=ax.transAxes, color="gray")
    axes[0, 0].set_ylabel("mean score (%)")
    axes[0, 0].set_ylim(0, 100)
    legend_right(axes[0, -1], handles=[Patch(color=c, label=s) for s, c in SETTING_COLORS.items()], fontsize=8)
    fig.suptitle(f"{title or 'Audio understanding: factual vs counterfactual samples'}\n"
                 "mean ± 95% CI over samples", fontsize=10)
    return save(fig, path, table)
