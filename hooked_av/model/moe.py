"""A sparse mixture-of-experts MLP with router hooks: softmax router, top-k, optionally renormalised weights.

The router weight and the experts are the HF model's own modules (shared, never copied). The experts are run
by the HF experts module itself (`experts(hidden [tokens, d_model], indices [tokens, k], weights [tokens, k])`,
the interface every `@use_experts_implementation` class of transformers 5 shares), so its grouped-mm /
batched-mm / eager back-end stays in use and the numbers are HF's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from hooked_av.model.components import fire, is_hooked


class SparseMoeMLP(nn.Module):
    """Router logits -> fp32 softmax over all experts -> top-k -> (renormalise) -> cast -> weighted experts.

    The order of operations is HF's (Qwen2/3-MoE): in low precision a change of order can flip near-tied expert
    choices. `hook_router_logits` [batch, pos, n_experts] sits before the softmax, so editing it (e.g. setting an
    expert's logit to -inf) re-routes tokens. `hook_expert_indices` / `hook_expert_weights` [batch, pos, k] are the
    chosen experts (descending probability) and their weights; hooks may edit either. Note that any hook upstream
    that changes the residual stream may also change routing.
    """

    def __init__(self, router_weight: nn.Parameter, experts: nn.Module, top_k: int, norm_topk_prob: bool):
        super().__init__()
        self.router_weight = router_weight  # [n_experts, d_model]
        self.experts = experts
        self.top_k = top_k
        self.norm_topk_prob = norm_topk_prob
        self.hook_router_logits = HookPoint()  # [batch, pos, n_experts]
        self.hook_expert_indices = HookPoint()  # [batch, pos, k]
        self.hook_expert_weights = HookPoint()  # [batch, pos, k]

    @property
    def n_experts(self) -> int:
        return self.router_weight.shape[0]

    def route(self, x: Float[Tensor, "batch pos d_model"]) -> tuple[Int[Tensor, "batch pos k"],
                                                                    Float[Tensor, "batch pos k"]]:
        logits = fire(self.hook_router_logits, F.linear(x, self.router_weight))
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        weights, indices = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        indices = fire(self.hook_expert_indices, indices)
        if is_hooked(self.hook_expert_indices):  # edited choices take their probabilities from the router
            weights = probs.gather(-1, indices)
            if self.norm_topk_prob:
                weights = weights / weights.sum(dim=-1, keepdim=True)
        return indices, fire(self.hook_expert_weights, weights.to(logits.dtype))

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        indices, weights = self.route(x)
        flat = x.reshape(-1, x.shape[-1])
        out = self.experts(flat, indices.reshape(-1, self.top_k), weights.reshape(-1, self.top_k))
        return out.view_as(x)

    @property
    def W_router(self) -> Float[Tensor, "d_model n_experts"]:
        """The router, in TransformerLens' [d_in, d_out] layout."""
        return self.router_weight.T
