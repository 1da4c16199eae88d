"""A static KV cache: one preallocated buffer per layer, filled in place by position (as in gpt-fast)."""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, d_head: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (n_layers, batch, n_kv_heads, max_len, d_head)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0  # positions already committed; a forward call appends after them
        self.max_len = max_len

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write this call's keys/values [batch, kv_head, new, d] and return all of them so far (views)."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions, capacity {self.max_len}")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def commit(self, n_new: int) -> None:
        self.length += n_new


class SharedPrefixKVCache:
    """Many continuations of one prefix: the prefix's keys/values (batch 1) are shared by every row, never copied.

    Each of the `n_rows` rows appends its own keys/values after the prefix. Attention over such a cache runs in
    two parts (shared prefix, own suffix) joined in one softmax; see Attention._attend_shared_prefix.
    """

    def __init__(self, prefix: KVCache, n_rows: int, max_new: int):
        if prefix.k.shape[1] != 1:
            raise ValueError(f"a shared prefix has batch 1, got {prefix.k.shape[1]}")
        self.prefix = prefix
        self.prefix_len = prefix.length
        n_layers, _, n_kv, _, d = prefix.k.shape
        self.suffix = KVCache(n_layers, n_rows, n_kv, max_new, d, prefix.k.dtype, prefix.k.device)

    @property
    def length(self) -> int:
        return self.prefix_len + self.suffix.length

    def prefix_kv(self, layer: int) -> tuple[Tensor, Tensor]:
        return (self.prefix.k[layer, :, :, :self.prefix_len], self.prefix.v[layer, :, :, :self.prefix_len])

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.suffix.update(layer, k, v)

    def commit(self, n_new: int) -> None:
        self.suffix.commit(n_new)
