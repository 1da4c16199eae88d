"""Fig. 5: the logit lens table, layers x positions, top-1 token with its probability as colour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hooked_av.analysis.logit_lens import LogitLensResult
from hooked_av.plot._style import plt, save, use_multilingual_font

LABEL_CHARS = 9  # longer tokens are cut, with "…", to fit a cell


def readable(text: str) -> str:
    """A token as a short label: whitespace and control tokens escaped (a newline shows as \\n), long ones cut."""
    if not text.strip() or not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…"


def shown_positions(n: int, max_positions: int) -> np.ndarray:
    """Indices of the positions drawn: all of them, or `max_positions` evenly spaced ones (first and last kept)."""
    if n <= max_positions:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_positions).round().astype(int))


def plot_logit_lens(result: LogitLensResult, path: str | Path, max_positions: int = 64, per_panel: int = 32,
                    title: str | None = None) -> Path:
    """Rows are layers (last at the top), columns positions, each cell the top-1 token coloured by its probability
    (colour bar); the position axis names each position's input token. More than `max_positions` positions are
    thinned to evenly spaced ones, and the title says how many were drawn; the positions are split into panels
    of `per_panel` columns. Writes the drawn cells next to the PNG (`<path>.csv`: layer, position, input_token,
    token, prob); `result.to_frame()` has every position."""
    use_multilingual_font()
    n_total = len(result.positions)
    keep = shown_positions(n_total, max_positions)
    panels = [keep[i:i + per_panel] for i in range(0, len(keep), per_panel)]
    n_layers = len(result.layers)
    probs = result.top_probs[:, :, 0].numpy()
    labels = result.top1()
    inputs = result.input_tokens or [""] * n_total
    width = 0.6 * min(per_panel, len(keep)) + 2.5
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, (0.32 * n_layers + 1.4) * len(panels) + 0.6),
                             squeeze=False, layout="constrained")
    for ax, cols in zip(axes[:, 0], panels):
        image = ax.imshow(probs[:, cols], aspect="auto", cmap="Blues", vmin=0, vmax=1, origin="lower")
        for li in range(n_layers):
            for x, pi in enumerate(cols):
                ax.text(x, li, readable(labels[li][pi]), ha="center", va="center", fontsize=6,
                        color="white" if probs[li, pi] > 0.6 else "black")
        ax.set_yticks(range(n_layers), [str(l) for l in result.layers], fontsize=7)
        ax.set_xticks(range(len(cols)), [f"{int(result.positions[pi])} {readable(inputs[pi])}".strip()
                                         for pi in cols], rotation=90, fontsize=6)
        ax.set_ylabel("layer")
    axes[-1, 0].set_xlabel("position and its input token")
    fig.colorbar(image, ax=list(axes[:, 0]), label="top-1 probability", fraction=0.03, pad=0.01)
    cut = (f"showing {len(keep)} of {n_total} positions (evenly spaced; lens.to_frame() has all)"
           if len(keep) < n_total else f"all {n_total} positions")
    fig.suptitle(f"{title or 'Logit lens: top-1 token of each layer at each position'}\n"
                 f"batch row {result.batch_index}, {cut}", fontsize=10)
    table = pd.DataFrame([(layer, int(result.positions[pi]), inputs[pi], labels[li][pi], float(probs[li, pi]))
                          for li, layer in enumerate(result.layers) for pi in keep],
                         columns=["layer", "position", "input_token", "token", "prob"])
    return save(fig, path, table)
