"""The hooked decoder: RMSNorm, rotary embedding, attention with per-layer dispatch, gated MLP, block.

Modules hold the *same* nn.Linear / nn.Parameter objects as the HF model they were built from, so weights are
shared, never copied. HookPoints are the only additions to the computation; a HookPoint without hooks is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from hooked_av.model.config import HookedAVConfig
from hooked_av.model.kv_cache import KVCache, SharedPrefixKVCache

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


def has_hooks(hook: HookPoint) -> bool:
    return bool(hook._forward_hooks or hook._backward_hooks)


def is_hooked(hook: HookPoint) -> bool:
    """Whether anything wants the hook point's value: a PyTorch hook, or a tracer that intercepts the call."""
    return has_hooks(hook) or is_traced(hook)


def is_traced(hook: HookPoint) -> bool:
    """A tracer that replaced the hook point's `forward` on the instance (nnsight's controller) sees only calls
    that happen, so while its trace runs every hook point fires (and attention runs eager, as for a hooked
    pattern). nnsight's controller says whether its trace is running (`state.active()`); outside one it is inert
    and the model keeps its fused path. An interceptor of another kind is taken to be always on."""
    forward = hook.__dict__.get("forward")
    if forward is None:
        return False
    active = getattr(getattr(forward, "state", None), "active", None)
    return active is None or active()[0] is not None


def fire(hook: HookPoint, x: Tensor) -> Tensor:
    """Run `x` through a hook point, skipping the module call when nothing is attached to it."""
    return hook(x) if is_hooked(hook) else x


class RMSNorm(nn.Module):
    """RMSNorm as in Qwen2: statistics in fp32, cast back, then the weight.

    `hook_scale` [batch, pos, 1] is the divisor sqrt(mean(x^2) + eps) (what TransformerLens' apply_ln uses);
    `hook_normalized` [batch, pos, d] is x / scale, before the weight (as in TransformerLens).
    """

    def __init__(self, weight: nn.Parameter, eps: float):
        super().__init__()
        self.w = weight
        self.eps = eps
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        x32 = x.float()
        inv_scale = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if is_hooked(self.hook_scale):
            inv_scale = 1.0 / self.hook_scale(1.0 / inv_scale)
        normalized = fire(self.hook_normalized, (x32 * inv_scale).to(x.dtype))
        return self.w * normalized


class RotaryEmbedding(nn.Module):
    """cos/sin tables from (possibly multi-axis) positions; each frequency channel reads one position axis."""

    def __init__(self, cfg: HookedAVConfig):
        super().__init__()
        d = cfg.d_head
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("axis_of_channel", torch.tensor(cfg.rope_axis_of_channel), persistent=False)

    def forward(self, positions: Float[Tensor, "axes batch pos"], dtype: torch.dtype):
        if positions.shape[0] == 1:
            pos = positions[0, ..., None].float().expand(*positions.shape[1:], self.inv_freq.numel())
        else:
            pos = positions.float().index_select(0, self.axis_of_channel).permute(1, 2, 0)
        freqs = pos * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Float[Tensor, "batch pos head d"], cos: Tensor, sin: Tensor) -> Tensor:
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return x * cos + rotate_half(x) * sin


@dataclass
class AttentionMask:
    """The additive attention mask of one forward call, materialised only for layers that need it.

    Query i of this call sits at absolute position k_len - q_len + i (the KV cache holds the earlier ones).
    """

    key_padding: Tensor | None  # [batch, k_len] bool, True = attend; None when nothing is padded
    batch: int
    q_len: int
    k_len: int
    dtype: torch.dtype
    device: torch.device
    _additive: Tensor | None = field(default=None, repr=False)

    def additive(self) -> Float[Tensor, "batch 1 q k"]:
        if self._additive is None:
            q_pos = torch.arange(self.k_len - self.q_len, self.k_len, device=self.device)
            allowed = torch.arange(self.k_len, device=self.device)[None, :] <= q_pos[:, None]
            allowed = allowed[None, None].expand(self.batch, 1, -1, -1)
            if self.key_padding is not None:
                allowed = allowed & self.key_padding[:, None, None, :]
            mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
            self._additive = mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        return self._additive

    def for_layer(self, hook: HookPoint, eager: bool) -> tuple[Tensor | None, bool]:
        """(mask, is_causal) for one layer. A hooked mask is a fresh copy each layer, so hooks may edit it."""
        if is_hooked(hook):
            return hook(self.additive().clone()), False
        if not eager and self.key_padding is None:
            if self.q_len == self.k_len:
                return None, self.q_len > 1
            if self.q_len == 1:
                return None, False
        return self.additive(), False


class Attention(nn.Module):
    """Grouped-query attention with RoPE. Runs fused SDPA unless its scores or pattern are hooked."""

    def __init__(self, cfg: HookedAVConfig, layer: int, q: nn.Linear, k: nn.Linear, v: nn.Linear, o: nn.Linear,
                 q_norm: nn.Module | None = None, k_norm: nn.Module | None = None):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = q, k, v, o
        self.q_norm, self.k_norm = q_norm, k_norm
        self.scale = cfg.d_head ** -0.5
        self.force_eager = False
        self.last_path: str | None = None  # "sdpa" or "eager": which kernel the latest call used
        self.hook_q = HookPoint()  # [batch, pos, head, d_head], before RoPE
        self.hook_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_v = HookPoint()
        self.hook_rot_q = HookPoint()
        self.hook_rot_k = HookPoint()
        self.hook_attn_mask = HookPoint()  # additive, broadcastable to [batch, head, q_pos, k_pos]
        self.hook_attn_scores = HookPoint()  # [batch, head, q_pos, k_pos], scaled and masked
        self.hook_pattern = HookPoint()  # [batch, head, q_pos, k_pos]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        self.hook_result = HookPoint()  # [batch, pos, head, d_model], each head's output (no bias); see _out

    def needs_eager(self) -> bool:
        return self.force_eager or is_hooked(self.hook_attn_scores) or is_hooked(self.hook_pattern)

    def forward(self, x: Float[Tensor, "batch pos d_model"], cos: Tensor, sin: Tensor, mask: AttentionMask,
                kv_cache: KVCache | None = None) -> Float[Tensor, "batch pos d_model"]:
        b, n, _ = x.shape
        d = self.cfg.d_head
        q = self.q_proj(x).view(b, n, -1, d)
        k = self.k_proj(x).view(b, n, -1, d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = fire(self.hook_q, q)
        k = fire(self.hook_k, k)
        v = fire(self.hook_v, self.v_proj(x).view(b, n, -1, d))
        q = fire(self.hook_rot_q, apply_rotary(q, cos, sin)).transpose(1, 2)
        k = fire(self.hook_rot_k, apply_rotary(k, cos, sin)).transpose(1, 2)
        v = v.transpose(1, 2)
        if isinstance(kv_cache, SharedPrefixKVCache):
            k, v = kv_cache.update(self.layer, k, v)
            attn_mask, _ = mask.for_layer(self.hook_attn_mask, eager=True)
            self.last_path = "shared_prefix"
            z = self._attend_shared_prefix(q, kv_cache.prefix_kv(self.layer), k, v, attn_mask)
            return self._out(fire(self.hook_z, z.transpose(1, 2)))
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)
        eager = self.needs_eager()
        attn_mask, is_causal = mask.for_layer(self.hook_attn_mask, eager)
        self.last_path = "eager" if eager else "sdpa"
        if eager:
            z = self._eager(q, k, v, attn_mask)
        else:
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=self.scale,
                                               enable_gqa=self.cfg.n_kv_groups > 1)
        return self._out(fire(self.hook_z, z.transpose(1, 2)))

    def _out(self, z: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "batch pos d_model"]:
        """The output projection. Per-head outputs (`hook_result`) are formed only when that hook point is hooked
        or `cfg.use_attn_result` is set (they take n_heads x the memory of the residual stream); either way the
        kernel of the layer does not change."""
        # Not formed for a tracer alone (it would be on every layer): as in TransformerLens, nnsight reads
        # hook_result with cfg.use_attn_result set.
        if not (self.cfg.use_attn_result or has_hooks(self.hook_result)):
            return self.o_proj(z.flatten(2))
        result = fire(self.hook_result, torch.einsum("bphd,hdm->bphm", z, self.W_O))
        return result.sum(2) + self.b_O

    def _eager(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor) -> Float[Tensor, "batch head q d"]:
        # Head h reads KV head h // n_kv_groups, as HF's repeat_kv, without repeating K/V: the g query heads of a KV
        # head are stacked as the rows of one matrix, so K and V (the KV cache's views) are read in place. A matmul
        # broadcast over a group axis instead copies K and V g times, which made eager decode steps 2-3x slower.
        b, h, nq, d = q.shape
        g = self.cfg.n_kv_groups
        scores = (q.reshape(b, h // g, g * nq, d) @ k.transpose(-1, -2)).view(b, h, nq, -1).mul_(self.scale)
        pattern = self._softmax_pattern(scores, attn_mask, q.dtype)
        return (pattern.reshape(b, h // g, g * nq, -1) @ v).view(b, h, nq, d)

    def _softmax_pattern(self, scores: Tensor, attn_mask: Tensor, dtype: torch.dtype) -> Tensor:
        # In place: `scores` is always a fresh tensor, and at 4k tokens each extra pass over it costs ~8%.
        scores = fire(self.hook_attn_scores, scores.add_(attn_mask))
        return fire(self.hook_pattern, torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype))

    def _attend_shared_prefix(self, q: Tensor, prefix: tuple[Tensor, Tensor], k: Tensor, v: Tensor,
                              attn_mask: Tensor) -> Float[Tensor, "batch head q d"]:
        """Attention of every row over the shared prefix (batch 1) plus its own suffix, in one softmax.

        The rows' queries are folded into the query axis of the single prefix batch, so the prefix keys and
        values are read once for all rows instead of being expanded (copied) per row.
        """
        b, h, nq, d = q.shape
        g = self.cfg.n_kv_groups
        kp, vp = prefix  # [1, kv, N, d]
        n_prefix = kp.shape[2]
        folded = q.view(b, h // g, g, nq, d).transpose(0, 1).reshape(1, h // g, b * g * nq, d)
        prefix_scores = (folded @ kp.transpose(-1, -2)).view(h // g, b, g, nq, n_prefix).transpose(0, 1)
        own_scores = q.view(b, h // g, g, nq, d) @ k.unsqueeze(2).transpose(-1, -2)
        scores = torch.cat([prefix_scores.reshape(b, h, nq, n_prefix), own_scores.view(b, h, nq, -1)], dim=-1)
        pattern = self._softmax_pattern(scores.mul_(self.scale), attn_mask, q.dtype)
        p_prefix, p_own = pattern.split([n_prefix, pattern.shape[-1] - n_prefix], dim=-1)
        p_folded = p_prefix.reshape(b, h // g, g, nq, n_prefix).transpose(0, 1).reshape(1, h // g, b * g * nq, n_prefix)
        z_prefix = (p_folded @ vp).view(h // g, b, g, nq, d).transpose(0, 1).reshape(b, h, nq, d)
        z_own = (p_own.reshape(b, h // g, g, nq, -1) @ v.unsqueeze(2)).view(b, h, nq, d)
        return z_prefix + z_own

    # Weight views in TransformerLens layout (no copies).
    @property
    def W_Q(self) -> Float[Tensor, "head d_model d_head"]:
        return rearrange(self.q_proj.weight, "(h d) m -> h m d", d=self.cfg.d_head)

    @property
    def W_K(self) -> Float[Tensor, "kv_head d_model d_head"]:
        return rearrange(self.k_proj.weight, "(h d) m -> h m d", d=self.cfg.d_head)

    @property
    def W_V(self) -> Float[Tensor, "kv_head d_model d_head"]:
        return rearrange(self.v_proj.weight, "(h d) m -> h m d", d=self.cfg.d_head)

    @property
    def W_O(self) -> Float[Tensor, "head d_head d_model"]:
        return rearrange(self.o_proj.weight, "m (h d) -> h d m", d=self.cfg.d_head)

    def _bias(self, linear: nn.Linear, n: int) -> Tensor:
        if linear.bias is None:
            return torch.zeros(n, self.cfg.d_head, dtype=linear.weight.dtype, device=linear.weight.device)
        return linear.bias.view(n, self.cfg.d_head)

    @property
    def b_Q(self) -> Tensor:
        return self._bias(self.q_proj, self.cfg.n_heads)

    @property
    def b_K(self) -> Tensor:
        return self._bias(self.k_proj, self.cfg.n_key_value_heads)

    @property
    def b_V(self) -> Tensor:
        return self._bias(self.v_proj, self.cfg.n_key_value_heads)

    @property
    def b_O(self) -> Tensor:
        w = self.o_proj.weight
        return self.o_proj.bias if self.o_proj.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype,
                                                                                  device=w.device)


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): hook_pre is the gate, hook_pre_linear the up projection."""

    def __init__(self, gate: nn.Linear, up: nn.Linear, down: nn.Linear, act_fn: str):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate, up, down
        self.act = ACTIVATIONS[act_fn]
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_pre_linear = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = fire(self.hook_pre, self.gate_proj(x))
        pre_linear = fire(self.hook_pre_linear, self.up_proj(x))
        return self.down_proj(fire(self.hook_post, self.act(pre) * pre_linear))

    @property
    def W_gate(self) -> Float[Tensor, "d_model d_mlp"]:
        return self.gate_proj.weight.T

    @property
    def W_in(self) -> Float[Tensor, "d_model d_mlp"]:
        return self.up_proj.weight.T

    @property
    def W_out(self) -> Float[Tensor, "d_mlp d_model"]:
        return self.down_proj.weight.T

    @property
    def b_out(self) -> Tensor:
        w = self.down_proj.weight
        return self.down_proj.bias if self.down_proj.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype,
                                                                                      device=w.device)


class TransformerBlock(nn.Module):
    """Pre-norm block. A family that adds features to the residual stream after the block (Qwen3's DeepStack)
    names the injection: the block then has `hook_{injection}` [batch, pos, d_model], added after the MLP and
    included in `hook_resid_post`, so resid_post(l) == resid_pre(l + 1) holds."""

    def __init__(self, ln1: RMSNorm, attn: Attention, ln2: RMSNorm, mlp: nn.Module, injection: str | None = None):
        super().__init__()
        self.ln1, self.attn, self.ln2, self.mlp = ln1, attn, ln2, mlp
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.injection_hook_name = None if injection is None else f"hook_{injection}"
        if self.injection_hook_name is not None:
            self.add_module(self.injection_hook_name, HookPoint())  # e.g. hook_deepstack
        self.hook_resid_post = HookPoint()

    def forward(self, resid: Tensor, cos: Tensor, sin: Tensor, mask: AttentionMask,
                kv_cache: KVCache | None = None, injection: Tensor | None = None) -> Tensor:
        resid = fire(self.hook_resid_pre, resid)
        attn_out = fire(self.hook_attn_out, self.attn(self.ln1(resid), cos, sin, mask, kv_cache))
        resid = fire(self.hook_resid_mid, resid + attn_out)
        mlp_out = fire(self.hook_mlp_out, self.mlp(self.ln2(resid)))
        resid = resid + mlp_out
        if injection is not None:
            resid = resid + fire(getattr(self, self.injection_hook_name), injection)
        return fire(self.hook_resid_post, resid)
