"""Expert routing by modality (beyond the paper): which experts of a mixture-of-experts decoder the video, audio,
prompt-text and generated tokens are sent to, layer by layer, how much audio and video share experts, and expert
knockouts as hooks.

Routing is read from `blocks.{l}.mlp.hook_expert_indices` [batch, pos, k] during KV-cached generation: the
prefill gives the prompt positions (grouped by the modality map), each decode step one generated token per row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from hooked_av.analysis.attention import group_index, is_query
from hooked_av.model.errors import InputError, check_layer
from hooked_av.model.moe import SparseMoeMLP

DEFAULT_GROUPS: dict[str, tuple[str, ...]] = {"video": ("video",), "audio": ("audio",), "image": ("image",),
                                              "prompt text": ("text",), "generated": ("generated",)}


@dataclass
class ExpertRouting:
    """Routing counts per layer, group of tokens and expert."""

    groups: list[str]
    layers: list[int]
    counts: Float[Tensor, "layer group expert"]  # (token, chosen expert) pairs
    n_tokens: list[int]  # tokens per group
    top_k: int
    generated_text: list[str]

    def share(self, group: str) -> Float[Tensor, "layer expert"]:
        """Fraction of the group's tokens routed to each expert (each token picks top_k experts, so the
        fractions sum to top_k; an expert every token uses has share 1)."""
        g = self.groups.index(group)
        return self.counts[:, g] / max(self.n_tokens[g], 1)

    def distribution(self, group: str) -> Float[Tensor, "layer expert"]:
        """The group's routing mass over experts, summing to 1 per layer."""
        return self.share(group) / self.top_k

    def overlap(self, a: str = "audio", b: str = "video") -> Float[Tensor, "layer"]:
        """Histogram intersection of two groups' distributions: 1 = same experts in the same proportions,
        0 = disjoint experts."""
        return torch.minimum(self.distribution(a), self.distribution(b)).sum(-1)

    def top_experts(self, group: str, n: int = 8) -> Tensor:
        """[layer, n] the group's most used experts, most used first."""
        return self.share(group).topk(n, dim=-1).indices

    def to_frame(self):
        import pandas as pd

        rows = [(layer, group, expert, float(self.counts[i, g, expert]), float(self.share(group)[i, expert]))
                for i, layer in enumerate(self.layers) for g, group in enumerate(self.groups)
                for expert in range(self.counts.shape[-1])]
        return pd.DataFrame(rows, columns=["layer", "group", "expert", "count", "share"])


def moe_layers(model) -> list[int]:
    layers = [l for l, block in enumerate(model.blocks) if isinstance(block.mlp, SparseMoeMLP)]
    if not layers:
        raise InputError(f"{model.cfg.family} has no mixture-of-experts layers: expert routing needs a MoE decoder")
    return layers


@torch.no_grad()
def expert_routing(model, batch: Any, *, max_new_tokens: int = 16,
                   groups: Mapping[str, Sequence[str]] = DEFAULT_GROUPS, layers: Sequence[int] | None = None,
                   fwd_hooks: Sequence = (), **generate_kwargs: Any) -> ExpertRouting:
    """Generate greedily and count, per layer and group of tokens, the experts each token is routed to.

    Prompt tokens are grouped by the modality map; generated tokens are those fed back at decode steps (a stop
    token and the padding after it are not). `fwd_hooks` (e.g. `expert_knockout_hooks`) stay active throughout.
    """
    all_moe = moe_layers(model)
    layers = all_moe if layers is None else [check_layer(l, model.cfg.n_layers) for l in layers]
    if missing := sorted(set(layers) - set(all_moe)):
        raise InputError(f"layers {missing} have no mixture-of-experts MLP")
    groups = dict(groups)
    n_experts = model.blocks[layers[0]].mlp.n_experts
    prompt_groups = group_index(model.modality_map(batch).codes, groups)  # [batch, N]; len(groups) = other
    calls: dict[int, list[Tensor]] = {layer: [] for layer in layers}

    def record(indices: Tensor, hook) -> None:  # [batch, pos, k]
        calls[hook.layer()].append(indices)

    hooks = [*fwd_hooks, *((f"blocks.{layer}.mlp.hook_expert_indices", record) for layer in layers)]
    out = model.generate(batch, max_new_tokens=max_new_tokens, fwd_hooks=hooks, **generate_kwargs)
    stops = torch.tensor(model.adapter.stop_token_ids(), device=out.new_tokens.device)
    fed_back = is_query(out.new_tokens, stops)[:, :len(calls[layers[0]]) - 1]  # [batch, decode steps]
    generated = torch.full_like(fed_back, groups_index(groups, "generated"), dtype=prompt_groups.dtype)
    token_groups = torch.cat([prompt_groups, generated.masked_fill(~fed_back, len(groups))], dim=1)
    counts = torch.zeros(len(layers), len(groups) + 1, n_experts)
    for i, layer in enumerate(layers):
        indices = torch.cat(calls[layer], dim=1)  # [batch, N + steps, k]
        slots = (token_groups[..., None] * n_experts + indices).flatten().cpu()
        counts[i] = torch.bincount(slots, minlength=(len(groups) + 1) * n_experts).view(-1, n_experts).float()
    n_tokens = [int((token_groups == g).sum()) for g in range(len(groups))]
    return ExpertRouting(groups=list(groups), layers=layers, counts=counts[:, :len(groups)], n_tokens=n_tokens,
                         top_k=calls[layers[0]][0].shape[-1], generated_text=out.text)


def groups_index(groups: Mapping[str, Sequence[str]], modality: str) -> int:
    """The group generated tokens count towards (len(groups), i.e. none, if no group names them)."""
    for g, modalities in enumerate(groups.values()):
        if modality in modalities:
            return g
    return len(groups)


def expert_knockout_hooks(model, experts: Sequence[int], layers: Sequence[int] | None = None) -> list:
    """Router-logit hooks that take `experts` out of the choice (logit -inf): their tokens go to the next best
    experts, and the top-k weights are renormalised over the remaining choices, as the router does."""
    return _router_hooks(model, layers, lambda logits: logits.index_fill(-1, _index(experts, logits), float("-inf")))


def force_expert_hooks(model, expert: int, layers: Sequence[int] | None = None) -> list:
    """Router-logit hooks that make `expert` every token's first choice (the other k - 1 choices unchanged)."""
    def force(logits: Tensor) -> Tensor:
        top = logits.amax(-1, keepdim=True)
        margin = top.abs() / 16 + 1.0  # stays a strict maximum after rounding in bf16 (8 significant bits)
        return logits.index_copy(-1, _index([expert], logits), top + margin)

    return _router_hooks(model, layers, force)


def _index(experts: Sequence[int], logits: Tensor) -> Tensor:
    index = torch.as_tensor(list(experts), dtype=torch.long, device=logits.device)
    if index.numel() and (index.min() < 0 or index.max() >= logits.shape[-1]):
        raise InputError(f"experts {list(experts)} outside [0, {logits.shape[-1]})")
    return index


def _router_hooks(model, layers: Sequence[int] | None, edit) -> list:
    layers = moe_layers(model) if layers is None else [check_layer(l, model.cfg.n_layers) for l in layers]
    return [(f"blocks.{layer}.mlp.hook_router_logits", lambda logits, hook: edit(logits)) for layer in layers]
