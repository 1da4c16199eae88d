"""Checks shared by the families' analysis tests."""

from __future__ import annotations

import torch

from hooked_av.analysis.attention import group_index
from hooked_av.analysis.knockout import Knockout, generate_with_knockout
from hooked_av.model.modality import Modality


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


def assert_knockout_makes_the_output_independent(model, batches, source: str):
    """Two batches that differ only in `source`'s media: their greedy tokens differ, and are equal once no other
    position may read `source` in any layer. Returns (clean, knocked) tokens and the knockout, for further checks."""
    others = tuple(m.name.lower() for m in Modality if m not in (Modality.PAD, Modality.parse(source)))
    knockout = Knockout(sources=source, targets=others, layers=tuple(range(model.cfg.n_layers)))
    clean = [model.generate(b, max_new_tokens=8, stop_token_ids=[]).new_tokens for b in batches]
    knocked = [generate_with_knockout(model, b, knockout, max_new_tokens=8, stop_token_ids=[]).new_tokens
               for b in batches]
    assert not torch.equal(clean[0], clean[1])  # the modality changes the generated tokens...
    assert torch.equal(knocked[0], knocked[1])  # ...unless no other position may read it
    return clean, knocked, knockout


def assert_last_lens_layer_is_the_models_output(model, batch, result, positions) -> None:
    """The logit lens after the last block is the model's own next-token distribution at those positions."""
    top = model(batch)[0, positions].softmax(-1).topk(result.top_ids.shape[-1], dim=-1)
    assert torch.equal(result.top_ids[-1], top.indices.cpu())
    assert torch.allclose(result.top_probs[-1], top.values.cpu(), atol=1e-5)
