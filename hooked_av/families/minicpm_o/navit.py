"""MiniCPM-o's SigLIP "NaViT" vision tower: transformers' Idefics2 vision transformer with the official
position bucketing.

The official tower computes each patch's fractional coordinate with a float-step `arange(0, 1 - 1e-6, 1/n)`,
transformers 5.24 with `i * (1/n)`; for some grid sides (49, 58, 77, ... on a 70-side table) one row or column
then falls in another bucket of the position table. Everything else is Idefics2's, weights and names included.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformers.models.idefics2.modeling_idefics2 import Idefics2VisionEmbeddings


def bucket_position_ids(rows: int, cols: int, side: int, device: torch.device | None = None
                        ) -> Int[Tensor, "rows_cols"]:
    """Position-table ids (row-major) of a rows x cols patch grid on a side x side table, as the official code.

    The official step is `1 / n` of an integer *tensor* (its grid sizes are tensors), i.e. rounded to fp32.
    """
    boundaries = torch.arange(1 / side, 1.0, 1 / side, device=device)

    def buckets(n: int) -> Tensor:
        step = 1 / torch.tensor(n)
        return torch.bucketize(torch.arange(0, 1 - 1e-6, step, device=device), boundaries, right=True)

    return (buckets(rows)[:, None] * side + buckets(cols)[None, :]).flatten()


class NaViTEmbeddings(Idefics2VisionEmbeddings):
    """Idefics2's patch + position embedding with the official bucket arithmetic (same parameters)."""

    def forward(self, pixel_values: Float[Tensor, "batch 3 height width"],
                patch_attention_mask: Bool[Tensor, "batch rows cols"]) -> Float[Tensor, "batch patches dim"]:
        embeddings = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        position_ids = torch.zeros(embeddings.shape[:2], dtype=torch.long, device=embeddings.device)
        for b, mask in enumerate(patch_attention_mask):  # each image sits top-left in its padded canvas
            rows, cols = int(mask[:, 0].sum()), int(mask[0].sum())
            position_ids[b, mask.flatten()] = bucket_position_ids(rows, cols, self.num_patches_per_side,
                                                                  embeddings.device)
        return embeddings + self.position_embedding(position_ids)


def strip_to_image(strip: Float[Tensor, "3 patch strip_width"], rows: int, cols: int
                   ) -> Float[Tensor, "3 height width"]:
    """The official processor's 1 x N strip of patches (row-major) back to the rows x cols image."""
    channels, patch, _ = strip.shape
    return (strip.reshape(channels, patch, rows, cols, patch).permute(0, 2, 1, 3, 4)
            .reshape(channels, rows * patch, cols * patch))


def encode_images(vpm: torch.nn.Module, strips: list[Tensor], sizes: Int[Tensor, "n 2"], batch_size: int
                  ) -> list[Float[Tensor, "patches dim"]]:
    """Vision-tower outputs of each image / slice ([rows * cols, dim], row-major), `batch_size` at a time.

    Images of one batch share a zero-padded canvas; the patch mask keeps padding out of attention.
    """
    patch = strips[0].shape[1]
    out: list[Tensor] = []
    for start in range(0, len(strips), batch_size):
        chunk = list(zip(strips[start:start + batch_size], sizes[start:start + batch_size].tolist()))
        max_rows = max(r for _, (r, _) in chunk)
        max_cols = max(c for _, (_, c) in chunk)
        pixels = strips[0].new_zeros(len(chunk), 3, max_rows * patch, max_cols * patch)
        mask = torch.zeros(len(chunk), max_rows, max_cols, dtype=torch.bool, device=pixels.device)
        for i, (strip, (rows, cols)) in enumerate(chunk):
            pixels[i, :, :rows * patch, :cols * patch] = strip_to_image(strip, rows, cols)
            mask[i, :rows, :cols] = True
        hidden = vpm(pixels, patch_attention_mask=mask).last_hidden_state
        out.extend(hidden[i][mask[i].flatten()] for i in range(len(chunk)))
    return out
