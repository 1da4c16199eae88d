"""The STC connector (`stc_connector_v35`) of VideoLLaMA2: spatial RegNet stages around a temporal-spatial
Conv3d downsampler, then an MLP. Official parameter names (`model.mm_projector.*`: timm's `RegStage` blocks
`s1`/`s2`, `sampler.0`, `readout.{0,2}`); transformers has no equal (its RegNet is another module), and timm is
not a dependency, so the few timm pieces it uses are written here.
"""

from __future__ import annotations

import einops
from jaxtyping import Float
from torch import Tensor, nn
from torch.nn import functional as F


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (timm's `LayerNorm2d`). eps 1e-5: the value that reproduces the
    official connector's outputs (max diff 2e-7; with 1e-6 it is 1.3e-3)."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class ConvNorm(nn.Module):
    """timm's `ConvNormAct` as the STC connector builds it: bias-free conv, LayerNorm2d, SiLU unless disabled."""

    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=(kernel - 1) // 2, groups=groups, bias=False)
        self.bn = LayerNorm2d(c_out)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, reduced, 1), nn.Conv2d(reduced, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.fc2(F.silu(self.fc1(x.mean((2, 3), keepdim=True)))).sigmoid()


class Bottleneck(nn.Module):
    """timm RegNet `Bottleneck` with bottleneck ratio 1, group size 1 (depthwise 3x3) and SE ratio 0.25 of the
    block's input channels."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = ConvNorm(c_in, c_out, 1)
        self.conv2 = ConvNorm(c_out, c_out, 3, groups=c_out)
        self.se = SqueezeExcite(c_out, int(round(c_in * 0.25)))
        self.conv3 = ConvNorm(c_out, c_out, 1, act=False)
        self.downsample = ConvNorm(c_in, c_out, 1, act=False) if c_in != c_out else None

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.silu(self.conv3(self.se(self.conv2(self.conv1(x)))) + shortcut)


class RegStage(nn.Module):
    def __init__(self, depth: int, c_in: int, c_out: int):
        super().__init__()
        for i in range(depth):
            self.add_module(f"b{i + 1}", Bottleneck(c_in if i == 0 else c_out, c_out))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.children():
            x = block(x)
        return x


class STCConnector(nn.Module):
    """[batch, frames, patches, d_vision] SigLIP features -> [batch, tokens, d_model], tokens in (t, h, w) order:
    (frames / 2) x g x g with g = (sqrt(patches) - 2) // 2 + 1 (the Conv3d has no padding)."""

    def __init__(self, d_vision: int, d_model: int, depth: int = 4, downsample: tuple[int, int, int] = (2, 2, 2)):
        super().__init__()
        self.s1 = RegStage(depth, d_vision, d_model)
        self.sampler = nn.Sequential(nn.Conv3d(d_model, d_model, downsample, stride=downsample), nn.SiLU())
        self.s2 = RegStage(depth, d_model, d_model)
        self.readout = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, d_model))

    def forward(self, x: Float[Tensor, "batch frames patches d"]) -> Float[Tensor, "batch tokens d_model"]:
        b, t, n, _ = x.shape
        side = int(n ** 0.5)
        x = self.s1(einops.rearrange(x, "b t (h w) d -> (b t) d h w", h=side, w=side))
        x = self.sampler(einops.rearrange(x, "(b t) d h w -> b d t h w", t=t))
        new_t = x.shape[2]
        x = self.s2(einops.rearrange(x, "b d t h w -> (b t) d h w"))
        return self.readout(einops.rearrange(x, "(b t) d h w -> b (t h w) d", t=new_t))

    @staticmethod
    def n_tokens(frames: int, patches: int) -> int:
        return (frames // 2) * ((int(patches ** 0.5) - 2) // 2 + 1) ** 2
