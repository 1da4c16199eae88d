"""MiniCPM-o's Whisper audio encoder: transformers' WhisperEncoder modules, run on inputs of their real length
with the official block-causal attention over 1 s chunks.

transformers 5.24's WhisperEncoder.forward accepts only 3000-frame inputs and ignores attention masks; the
official encoder slices the position table to the real length and masks attention so that an encoder frame
sees every frame up to the end of its own chunk. Only that forward is written here.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformers.models.whisper.modeling_whisper import WhisperEncoder


def block_causal_mask(mel_frames: Int[Tensor, "batch"], length: int, chunk: int, dtype: torch.dtype
                      ) -> Float[Tensor, "batch 1 length length"]:
    """Additive mask: frame i sees frames up to the end of its `chunk`-frame block.

    The key padding follows the official code, which compares encoder positions with *mel-frame* counts
    (so the padding of a shorter segment in a batch is masked only beyond its mel length).
    """
    pos = torch.arange(length, device=mel_frames.device)
    blocked = pos[None, :] >= ((pos // chunk + 1) * chunk)[:, None]
    blocked = blocked[None] | (pos[None, None, :] >= mel_frames[:, None, None])
    mask = torch.zeros(blocked.shape, dtype=dtype, device=mel_frames.device)
    return mask.masked_fill(blocked, torch.finfo(dtype).min)[:, None]


class ChunkedWhisperEncoder(WhisperEncoder):
    """WhisperEncoder (same parameters) with the official forward: real length, block-causal mask."""

    def forward(self, input_features: Float[Tensor, "batch mels frames"], mel_frames: Int[Tensor, "batch"],
                chunk: int) -> Float[Tensor, "batch length d_model"]:
        x = nn.functional.gelu(self.conv1(input_features.to(self.conv1.weight.dtype)))
        x = nn.functional.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.embed_positions.weight[: x.shape[1]]
        mask = block_causal_mask(mel_frames, x.shape[1], chunk, x.dtype)
        for layer in self.layers:
            x = layer(x, mask)
        return self.layer_norm(x)


class AudioProjector(nn.Module):
    """Linear, ReLU, Linear: the encoder's output to the LLM width."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(in_dim, out_dim)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.relu(self.linear1(x)))
