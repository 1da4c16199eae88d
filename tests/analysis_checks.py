"""Checks shared by the families' analysis tests."""

from __future__ import annotations

import torch

from hooked_av.analysis.attention import group_index


def assert_shares_match_a_full_forward(model, batch, result, groups, n_queries: int = 4) -> None:
    """Attention by modality equals a hand computation: one forward over prompt + generated tokens, the pattern
    rows of the first `n_queries` generated queries summed per group and averaged over them."""
    assert torch.allclose(result.per_head.sum(-1), torch.ones(model.cfg.n_layers, model.cfg.n_heads), atol=1e-5)
    out = model.generate(batch, max_new_tokens=n_queries + 1, stop_token_ids=[])
    full = {**batch, "input_ids": out.sequences, "attention_mask": torch.ones_like(out.sequences)}
    _, cache = model.run_with_cache(full, names_filter=lambda n: n.endswith("hook_pattern"))
    n = batch["input_ids"].shape[1]
    group_of = group_index(out.modality_map.codes, groups)[0]
    for layer in range(model.cfg.n_layers):
        rows = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, n:n + n_queries]
        expected = torch.stack([rows[..., group_of == g].sum(-1) for g in range(len(groups) + 1)], dim=-1).mean(1)
        assert torch.allclose(result.per_head[layer], expected, atol=1e-5)
