"""BEATs (microsoft/unilm), the audio encoder of VideoLLaMA2.1-AV, with the official parameter names
(`model.audio_tower.*`). transformers has no BEATs.

Post-LN transformer with DeepNorm residual scaling, a weight-normalised convolutional position embedding and a
gated relative position bias whose table (layer 0's) is shared by every layer. The official code scales queries
by 1/32 and multiplies the max-subtracted scores by 32 (an fp16 overflow guard); that is softmax(q k^T / sqrt(d)
+ bias) v, written here directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from torch.nn import functional as F

# the fbank statistics BEATs normalises with (the official `extract_features` defaults); the std is doubled there
FBANK_MEAN, FBANK_STD = 15.41663, 6.55582


@dataclass
class BEATsConfig:
    """The official `BEATsConfig` class defaults: the official inference path builds BEATs from them, never from
    the checkpoint's config.json (the real VideoLLaMA2.1-AV sizes). `from_dict` takes overrides."""

    input_patch_size: int = 16
    embed_dim: int = 512
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    conv_pos: int = 128
    conv_pos_groups: int = 16
    num_buckets: int = 320
    max_distance: int = 800
    layer_norm_eps: float = 1e-5
    predictor_class: int = 527

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> BEATsConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (values or {}).items() if k in known})

    @property
    def deep_norm_alpha(self) -> float:
        return (2 * self.encoder_layers) ** 0.25


def relative_buckets(relative: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """T5-style bidirectional buckets of key - query offsets: exact below a quarter of the buckets, logarithmic up
    to `max_distance`, capped."""
    half = num_buckets // 2
    buckets = (relative > 0).long() * half
    distance = relative.abs()
    exact = half // 2
    large = exact + (torch.log(distance.float() / exact) / math.log(max_distance / exact) * (half - exact)).long()
    large = torch.min(large, torch.full_like(large, half - 1))
    return buckets + torch.where(distance < exact, distance, large)


class GatedRelativeAttention(nn.Module):
    def __init__(self, cfg: BEATsConfig, has_table: bool):
        super().__init__()
        d, self.n_heads = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        self.d_head = d // self.n_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))
        self.grep_linear = nn.Linear(self.d_head, 8)
        self.grep_a = nn.Parameter(torch.ones(1, self.n_heads, 1, 1))
        if has_table:
            self.relative_attention_bias = nn.Embedding(cfg.num_buckets, self.n_heads)

    def forward(self, x: Float[Tensor, "batch pos d"], table: Float[Tensor, "heads q k"]) -> Tensor:
        b, n, _ = x.shape
        split = lambda t: t.view(b, n, self.n_heads, self.d_head).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        # the gate reads the unscaled query of each head: two sigmoids of sums of 4 of the 8 outputs
        gate_a, gate_b = torch.sigmoid(self.grep_linear(q).view(b, self.n_heads, n, 2, 4).sum(-1)).chunk(2, dim=-1)
        gate = gate_a * (gate_b * self.grep_a - 1.0) + 2.0
        scores = q @ k.transpose(-1, -2) * self.d_head ** -0.5 + gate * table
        out = scores.float().softmax(-1).type_as(q) @ v
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: BEATsConfig, has_table: bool):
        super().__init__()
        d = cfg.encoder_embed_dim
        self.alpha = cfg.deep_norm_alpha
        self.self_attn = GatedRelativeAttention(cfg, has_table)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.fc1, self.fc2 = nn.Linear(d, cfg.encoder_ffn_embed_dim), nn.Linear(cfg.encoder_ffn_embed_dim, d)
        self.final_layer_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor, table: Tensor) -> Tensor:
        x = self.self_attn_layer_norm(x * self.alpha + self.self_attn(x, table))
        return self.final_layer_norm(x * self.alpha + self.fc2(F.gelu(self.fc1(x).float()).type_as(x)))


class WeightNormConv1d(nn.Conv1d):
    """Grouped Conv1d with the official `weight_norm_fix` over dim 2: weight = g * v / sqrt(sum v^2 + 1e-6), the
    sum over (out, in) channels per kernel tap (torch's weight norm has no epsilon)."""

    def __init__(self, d: int, kernel: int, groups: int):
        super().__init__(d, d, kernel, padding=kernel // 2, groups=groups)
        del self.weight
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.empty(d, d // groups, kernel))

    def forward(self, x: Tensor) -> Tensor:
        v = self.weight_v
        weight = self.weight_g * v / torch.sqrt(v.pow(2).sum(dim=(0, 1), keepdim=True) + 1e-6)
        return self._conv_forward(x, weight, self.bias)


class Encoder(nn.Module):
    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        self.cfg = cfg
        self.pos_conv = nn.Sequential(WeightNormConv1d(cfg.encoder_embed_dim, cfg.conv_pos, cfg.conv_pos_groups))
        self.layer_norm = nn.LayerNorm(cfg.encoder_embed_dim, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(cfg, has_table=True) for _ in range(cfg.encoder_layers))

    def position_table(self, n: int) -> Float[Tensor, "heads q k"]:
        pos = torch.arange(n, device=self.layer_norm.weight.device)
        buckets = relative_buckets(pos[None, :] - pos[:, None], self.cfg.num_buckets, self.cfg.max_distance)
        return self.layers[0].self_attn.relative_attention_bias(buckets).permute(2, 0, 1)

    def forward(self, x: Float[Tensor, "batch pos d"]) -> Tensor:
        conv = self.pos_conv(x.transpose(1, 2))
        if self.cfg.conv_pos % 2 == 0:  # the official SamePad: an even kernel gives one step too many
            conv = conv[..., :-1]
        x = self.layer_norm(x + F.gelu(conv).transpose(1, 2))
        table = self.position_table(x.shape[1])
        for layer in self.layers:
            x = layer(x, table)
        return x


class BEATs(nn.Module):
    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        self.cfg = cfg
        p = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, kernel_size=p, stride=p, bias=False)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.post_extract_proj = nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim)
        self.encoder = Encoder(cfg)
        self.predictor = nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class)  # AudioSet head, unused

    def forward(self, fbank: Float[Tensor, "batch frames mel"]) -> Float[Tensor, "batch tokens d"]:
        """Encoder output per patch, time-major (token = t * mel_patches + f); frames past the last full patch
        are dropped by the patch convolution."""
        x = (fbank - FBANK_MEAN) / (2 * FBANK_STD)
        patches = self.patch_embedding(x.unsqueeze(1)).flatten(2).transpose(1, 2)
        return self.encoder(self.post_extract_proj(self.layer_norm(patches)))

    @staticmethod
    def n_tokens(cfg: BEATsConfig, frames: int, mel_bins: int) -> int:
        return (frames // cfg.input_patch_size) * (mel_bins // cfg.input_patch_size)
