"""MiniCPM-o's perceiver resampler: a fixed number of learned queries cross-attend to one image's patches.

keys = LN(kv_proj(patches)) + 2-D sin-cos position, values = LN(kv_proj(patches)), queries = LN(query); one
`nn.MultiheadAttention`, then LN and `@ proj`. The position table is not in the checkpoint: computed here.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn


def sincos_1d(dim: int, pos: Tensor) -> Float[Tensor, "n dim"]:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float32) / (dim / 2.0))
    angles = pos.float()[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def sincos_2d(dim: int, rows: int, cols: int) -> Float[Tensor, "rows_cols dim"]:
    """Row-major positions of a rows x cols grid: first half of the channels the column, second half the row."""
    row = torch.arange(rows).repeat_interleave(cols)
    col = torch.arange(cols).repeat(rows)
    return torch.cat([sincos_1d(dim // 2, col), sincos_1d(dim // 2, row)], dim=-1)


class Resampler(nn.Module):
    def __init__(self, num_queries: int, embed_dim: int, kv_dim: int, eps: float = 1e-6):
        super().__init__()
        # the official code derives the head count this way, so the LLM width must be a multiple of 128
        self.num_heads = embed_dim // 128
        self.query = nn.Parameter(torch.zeros(num_queries, embed_dim))
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False) if kv_dim != embed_dim else nn.Identity()
        self.attn = nn.MultiheadAttention(embed_dim, self.num_heads)
        self.ln_q = nn.LayerNorm(embed_dim, eps=eps)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=eps)
        self.ln_post = nn.LayerNorm(embed_dim, eps=eps)
        self.proj = nn.Parameter(torch.zeros(embed_dim, embed_dim))

    def forward(self, patches: list[Float[Tensor, "n kv_dim"]], sizes: list[tuple[int, int]]
                ) -> Float[Tensor, "images queries dim"]:
        """One block of `num_queries` tokens per image; `sizes` are the (rows, cols) patch grids."""
        lengths = [p.shape[0] for p in patches]
        x = self.ln_kv(self.kv_proj(nn.utils.rnn.pad_sequence(patches, batch_first=True)))
        pos = nn.utils.rnn.pad_sequence([sincos_2d(x.shape[-1], r, c) for r, c in sizes], batch_first=True)
        pos = pos.to(x.device, x.dtype)
        padding = torch.arange(x.shape[1], device=x.device)[None, :] >= torch.tensor(lengths, device=x.device)[:, None]
        query = self.ln_q(self.query)[:, None].expand(-1, len(patches), -1)
        out = self.attn(query, (x + pos).transpose(0, 1), x.transpose(0, 1), key_padding_mask=padding,
                        need_weights=False)[0]
        return self.ln_post(out.transpose(0, 1)) @ self.proj
