"""A model organism for the paper's phenomena: a tiny Qwen2.5-Omni thinker trained on a synthetic world in which
sight and sound agree and vision is the easier cue, so that it learns the paper's visual shortcut; and its
vision-only twin (a tiny Qwen2.5-VL), the base model of the token-shift analysis. See docs/organism.md.
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"


def shipped_organism() -> Path:
    """Folder of the shipped organism checkpoint (HF layout): `HookedAVModel.from_pretrained(shipped_organism())`."""
    return CHECKPOINTS / "organism"


def shipped_twin() -> Path:
    """Folder of the shipped vision-only twin (Qwen2.5-VL class, same word ids)."""
    return CHECKPOINTS / "twin"
