"""The decoder's configuration, with the field names TransformerLens' ActivationCache and utilities read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class HookedAVConfig:
    n_layers: int
    d_model: int
    n_heads: int
    n_key_value_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    eps: float
    rope_theta: float
    # Frequency channel i (of d_head // 2) takes its position from axis rope_axis_of_channel[i]
    # (0 = time, 1 = height, 2 = width). All zeros is plain 1-D RoPE.
    rope_axis_of_channel: tuple[int, ...]
    act_fn: str = "silu"
    family: str = ""
    dtype: torch.dtype = torch.float32
    device: str | torch.device | None = None
    # Fields TransformerLens reads; fixed by what this decoder is.
    normalization_type: str = "RMS"
    final_rms: bool = True
    attn_only: bool = False
    positional_embedding_type: str = "rotary"
    default_prepend_bos: bool = False
    use_attn_result: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_rope_axes(self) -> int:
        return max(self.rope_axis_of_channel) + 1

    @property
    def n_kv_groups(self) -> int:
        return self.n_heads // self.n_key_value_heads


def rope_axis_of_channel(kind: str, d_head: int, sections: list[int] | None) -> tuple[int, ...]:
    """Map each rotary frequency channel to its position axis.

    "mrope" (Qwen2-VL / Qwen2.5-Omni): contiguous sections, section i follows axis i % 3.
    "mrope_interleaved" (Qwen3-VL / Qwen3-Omni): channels cycle t, h, w, t, h, w, ... until an axis has used up
    its section, then the remaining channels follow time.
    """
    half = d_head // 2
    if kind == "default":
        return (0,) * half
    if sections is None or sum(sections) != half:
        raise ValueError(f"mrope sections {sections} must sum to d_head/2 = {half}")
    if kind == "mrope":
        return tuple(i % 3 for i, size in enumerate(sections) for _ in range(size))
    if kind == "mrope_interleaved":
        if any(3 * (sections[axis] - 1) + axis >= half for axis in (1, 2) if sections[axis]):
            raise ValueError(f"interleaved mrope sections {sections} do not fit d_head/2 = {half} channels "
                             "(height and width take every third channel)")
        axes = [0] * half
        for axis in (1, 2):
            for ch in range(axis, 3 * sections[axis], 3):
                axes[ch] = axis
        return tuple(axes)
    raise ValueError(f"unknown rope kind {kind!r}")
