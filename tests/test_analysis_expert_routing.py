"""Expert routing by modality on the tiny Qwen3-Omni-MoE thinker: known answers and a hand computation."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from hooked_av import InputError
from hooked_av.analysis.expert_routing import (expert_knockout_hooks, expert_routing, force_expert_hooks,
                                               moe_layers)
from hooked_av.plot import plot_expert_routing

from .test_plots import assert_png


def test_forcing_one_expert_shows_it_for_every_token(q3omni, q3_batches):
    _, _, model = q3omni
    result = expert_routing(model, q3_batches["audio+video"], max_new_tokens=4, stop_token_ids=[],
                            fwd_hooks=force_expert_hooks(model, 3))
    present = [g for g, n in zip(result.groups, result.n_tokens) if n]
    assert present == ["video", "audio", "prompt text", "generated"]
    for group in present:
        assert torch.equal(result.share(group)[:, 3], torch.ones(model.cfg.n_layers))
        assert torch.allclose(result.distribution(group).sum(-1), torch.ones(model.cfg.n_layers))


def test_counts_equal_a_hand_computation(q3omni, q3_batches):
    _, _, model = q3omni
    batch = q3_batches["padded_batch"]
    result = expert_routing(model, batch, max_new_tokens=5, stop_token_ids=[])
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_expert_indices"))
    mm = cache.modality_map
    n_experts = model.blocks[0].mlp.n_experts
    for layer in result.layers:
        indices = cache[f"blocks.{layer}.mlp.hook_expert_indices"]
        for group, modality in (("video", "video"), ("audio", "audio"), ("prompt text", "text")):
            expected = torch.bincount(indices[mm.mask(modality)].flatten(), minlength=n_experts).float()
            assert torch.equal(result.counts[layer, result.groups.index(group)], expected)
    assert result.n_tokens[result.groups.index("generated")] == 2 * 4  # 2 rows, 4 tokens fed back each
    assert torch.equal(result.counts[:, result.groups.index("generated")].sum(-1), torch.full((4,), 8.0 * 2))
    assert torch.allclose(result.overlap("audio", "audio"), torch.ones(4))
    overlap = result.overlap("audio", "video")
    assert ((overlap >= 0) & (overlap <= 1)).all() and (overlap < 1).any()


def test_expert_knockout_takes_the_expert_out_of_its_layers_only(q3omni, q3_batches):
    _, _, model = q3omni
    batch = q3_batches["audio+video"]
    clean = expert_routing(model, batch, max_new_tokens=3, stop_token_ids=[])
    expert = int(clean.counts[1].sum(0).argmax())
    knocked = expert_routing(model, batch, max_new_tokens=3, stop_token_ids=[],
                             fwd_hooks=expert_knockout_hooks(model, [expert], layers=[1]))
    assert clean.counts[1, :, expert].sum() > 0 and knocked.counts[1, :, expert].sum() == 0
    prompt = [clean.groups.index(g) for g in ("video", "audio", "prompt text")]
    assert torch.equal(clean.counts[0, prompt], knocked.counts[0, prompt])  # layer 0 runs before the knockout
    assert not torch.equal(clean.counts[2:], knocked.counts[2:])  # later layers see a changed residual stream


def test_bad_inputs_are_typed_errors(q3omni, omni, q3_batches):
    _, _, model = q3omni
    with pytest.raises(InputError, match="outside"):
        model.run_with_hooks(q3_batches["text"], fwd_hooks=expert_knockout_hooks(model, [99]))
    with pytest.raises(InputError, match="mixture-of-experts"):
        moe_layers(omni[2])


def test_expert_routing_figure(q3omni, q3_batches, tmp_path):
    _, _, model = q3omni
    result = expert_routing(model, q3_batches["audio+video"], max_new_tokens=3, stop_token_ids=[])
    assert len(result.to_frame()) == 4 * 5 * 8
    assert_png(plot_expert_routing(result, tmp_path / "experts.png"))
    table = pd.read_csv(tmp_path / "experts.csv")
    assert table["share"].tolist() == pytest.approx(result.to_frame()["share"].tolist())
