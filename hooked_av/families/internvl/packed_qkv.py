"""Unpacking the fused q/k/v projections of the official checkpoints into per-head q, k and v projections.

InternLM2's `attention.wqkv.weight` [(n_heads + 2 * n_kv_heads) * d_head, d_model] is grouped per KV head: viewed as
[n_kv_heads, g + 2, d_head, d_model] (g = n_heads / n_kv_heads query heads per KV head), slots 0..g-1 of KV head h
are the query heads h*g .. h*g+g-1, slot g is key head h and slot g+1 value head h (transformers' own InternVL
conversion reads it the same way). Splitting it as "first n_heads * d_head rows = q" would pair queries with the
wrong keys. InternViT's `attn.qkv` is packed differently: plain thirds [q; k; v].
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from hooked_av.model.errors import UnsupportedCheckpointError


def split_wqkv(wqkv: Float[Tensor, "rows d_model"], n_heads: int, n_kv_heads: int, d_head: int
               ) -> tuple[Tensor, Tensor, Tensor]:
    """(W_q [n_heads * d_head, d_model], W_k, W_v [n_kv_heads * d_head, d_model]) with heads in natural order."""
    group = n_heads // n_kv_heads
    rows = (n_heads + 2 * n_kv_heads) * d_head
    if wqkv.shape[0] != rows or n_heads % n_kv_heads:
        raise UnsupportedCheckpointError(
            f"a packed wqkv of shape {tuple(wqkv.shape)} does not fit {n_heads} query heads, {n_kv_heads} KV heads "
            f"of size {d_head} ({rows} rows expected)")
    slots = wqkv.view(n_kv_heads, group + 2, d_head, -1)
    q = slots[:, :group].reshape(n_heads * d_head, -1)
    k = slots[:, group].reshape(n_kv_heads * d_head, -1)
    v = slots[:, group + 1].reshape(n_kv_heads * d_head, -1)
    return q.contiguous(), k.contiguous(), v.contiguous()


def pack_wqkv(q: Tensor, k: Tensor, v: Tensor, n_kv_heads: int, d_head: int) -> Tensor:
    """The inverse of `split_wqkv`: the official packed layout."""
    group = q.shape[0] // (n_kv_heads * d_head)
    slots = [q.view(n_kv_heads, group, d_head, -1), k.view(n_kv_heads, 1, d_head, -1),
             v.view(n_kv_heads, 1, d_head, -1)]
    return torch.cat(slots, dim=1).reshape(-1, q.shape[-1])


def split_thirds(qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """InternViT's fused `attn.qkv` (weight or bias): [q; k; v] in equal thirds."""
    if qkv.shape[0] % 3:
        raise UnsupportedCheckpointError(f"a fused vision qkv of shape {tuple(qkv.shape)} cannot be split in thirds")
    return tuple(t.contiguous() for t in qkv.chunk(3, dim=0))  # type: ignore[return-value]
