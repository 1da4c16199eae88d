"""Shared figure set-up: a headless backend, a font that can draw CJK tokens when one is installed, saving a figure
with the table it drew."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402

CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Source Han Sans SC", "WenQuanYi Zen Hei", "SimHei",
             "Microsoft YaHei", "PingFang SC")
MODALITY_COLORS = {"video": "tab:blue", "audio": "tab:orange", "image": "tab:purple", "text": "tab:green",
                   "other": "tab:gray"}


def use_multilingual_font() -> None:
    """Put an installed CJK font behind DejaVu Sans, so tokens like 键盘 render (tofu boxes otherwise)."""
    installed = {f.name for f in font_manager.fontManager.ttflist}
    fallbacks = [f for f in CJK_FONTS if f in installed]
    plt.rcParams["font.family"] = ["DejaVu Sans", *fallbacks]


def save(fig, path: str | Path, table) -> Path:
    """Write the figure and, next to it (same name, .csv), the table it drew; returns the figure's path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    table.to_csv(path.with_suffix(".csv"), index=False)
    return path


def legend_right(ax, **kwargs) -> None:
    """A legend outside the axes, on the right, so it covers no data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False, **kwargs)
