"""Fig. 7: how far the AV model's tokens shift from the base VLM's distribution."""

from __future__ import annotations

from pathlib import Path

from hooked_av.plot._style import plt, save

BUCKET_COLORS = {"unshifted": "tab:gray", "marginal": "tab:olive", "shifted": "tab:red"}


def plot_token_shift(summaries: dict[str, dict[str, float]], path: str | Path, title: str | None = None) -> Path:
    """`summaries`: name -> the dict of `aggregate_shift` (e.g. {"all tokens": ..., "sound-event tokens": ...}).
    Left: stacked bucket fractions; right: mean KL divergence in both directions."""
    names = list(summaries)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    bottom = [0.0] * len(names)
    for bucket, color in BUCKET_COLORS.items():
        values = [100 * summaries[n].get(bucket, 0.0) for n in names]
        left.bar(names, values, bottom=bottom, color=color, label=bucket)
        for i, v in enumerate(values):
            if v >= 5:
                left.text(i, bottom[i] + v / 2, f"{v:.1f}%", ha="center", va="center", fontsize=8, color="white")
        bottom = [b + v for b, v in zip(bottom, values)]
    left.set_ylabel("tokens (%)")
    left.set_ylim(0, 100)
    left.legend(frameon=False, fontsize=8)
    left.set_title("base rank η: 1 / 2-3 / >3", fontsize=9)
    width = 0.38
    xs = range(len(names))
    right.bar([x - width / 2 for x in xs], [summaries[n].get("kl_base_av", 0.0) for n in names], width,
              label="KL(base ‖ AV)")
    right.bar([x + width / 2 for x in xs], [summaries[n].get("kl_av_base", 0.0) for n in names], width,
              label="KL(AV ‖ base)")
    right.set_xticks(list(xs), names)
    right.set_ylabel("mean KL (nats)")
    right.legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title)
    return save(fig, path)
