"""Fig. 5: the logit lens table, layers x positions, top-1 token with its probability as colour."""

from __future__ import annotations

from pathlib import Path

from hooked_av.analysis.logit_lens import LogitLensResult
from hooked_av.plot._style import plt, save, use_multilingual_font


def plot_logit_lens(result: LogitLensResult, path: str | Path, max_positions: int = 24,
                    title: str | None = None) -> Path:
    """Rows are layers (last at the top), columns positions; each cell shows the top-1 token."""
    use_multilingual_font()
    n_pos = min(max_positions, len(result.positions))
    probs = result.top_probs[:, :n_pos, 0].numpy()
    labels = result.top1()
    fig, ax = plt.subplots(figsize=(0.9 * n_pos + 1.5, 0.35 * len(result.layers) + 1.2))
    ax.imshow(probs, aspect="auto", cmap="Blues", vmin=0, vmax=1.25, origin="lower")  # text stays legible
    for li in range(len(result.layers)):
        for pi in range(n_pos):
            text = labels[li][pi].strip()
            if not text or not text.isprintable():  # whitespace and control tokens are shown escaped
                text = repr(labels[li][pi])[1:-1]
            ax.text(pi, li, text[:8], ha="center", va="center", fontsize=6)
    ax.set_yticks(range(len(result.layers)), [str(l) for l in result.layers])
    ax.set_xticks(range(n_pos), [str(int(p)) for p in result.positions[:n_pos]], rotation=90, fontsize=6)
    ax.set_xlabel("position")
    ax.set_ylabel("layer")
    ax.set_title(title or "Logit lens (top-1 token, colour = probability)")
    return save(fig, path)
