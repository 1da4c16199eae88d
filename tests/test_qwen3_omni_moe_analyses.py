"""The paper's analyses run unchanged on the Qwen3-Omni-MoE family (tiny model): attention by modality, logit
lens, attention knockout (against HF's eager attention with an edited mask, and the shared-prefix sweep) and
token shift."""

from __future__ import annotations

import torch

from hooked_av import HookedAVModel
from hooked_av.analysis.attention import DEFAULT_GROUPS, attention_by_modality
from hooked_av.analysis.knockout import Knockout, generate_knockouts, generate_with_knockout, knockout_hooks
from hooked_av.analysis.logit_lens import logit_lens
from hooked_av.analysis.token_shift import token_shift
from hooked_av.testing.tiny_qwen3_omni import tiny_qwen3_omni_thinker

from .analysis_checks import assert_shares_match_a_full_forward
from .test_analysis_knockout import hf_knockout


def test_attention_by_modality_matches_a_hand_computation(q3omni, q3_batches):
    _, _, model = q3omni
    batch = q3_batches["audio+video"]
    result = attention_by_modality(model, batch, max_new_tokens=5, stop_token_ids=[])
    assert result.n_queries == 4
    assert_shares_match_a_full_forward(model, batch, result, DEFAULT_GROUPS, n_queries=4)


def test_logit_lens_last_layer_is_the_models_output_and_sees_deepstack(q3omni, q3_batches):
    _, _, model = q3omni
    batch = q3_batches["audio+video"]
    result = logit_lens(model, batch, positions="video", top_k=3)
    video = model.modality_map(batch).positions("video")
    top = model(batch)[0, video].softmax(-1).topk(3, dim=-1)
    assert torch.equal(result.top_ids[-1], top.indices.cpu())
    # Layer 0's lens reads resid_post, which includes DeepStack level 0 at video positions.
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n.startswith("blocks.0.hook_"))
    with_ds = model.unembed(model.ln_final(cache["blocks.0.hook_resid_post"]))[0, video].argmax(-1)
    assert torch.equal(result.top_ids[0, :, 0], with_ds.cpu())


def test_knockout_mask_hook_equals_hf_with_an_edited_eager_mask(q3omni, q3_batches):
    hf_model, _, model = q3omni
    batch = q3_batches["audio+video"]
    mm = model.modality_map(batch)
    n = batch["input_ids"].shape[1]
    targets = torch.arange(n - 12, n)
    ko = Knockout(sources="audio", targets=tuple(targets.tolist()), layers=(1, 2))
    ours = model.run_with_hooks(batch, fwd_hooks=knockout_hooks(model, [ko], mm, n))
    ref = hf_knockout(hf_model, batch, (1, 2), targets, mm.positions("audio"))
    assert (ours - ref).abs().max() < 1e-4
    assert (ours[:, -1] - model(batch)[:, -1]).abs().max() > 1e-4


def test_shared_prefix_knockouts_equal_each_configuration_from_scratch(q3omni, q3_batches):
    """Targets inside the video block make the shared prefix end before DeepStack positions: the injection must
    be split between the prefix and the rows' own suffixes."""
    _, _, model = q3omni
    batch = q3_batches["use_audio_in_video"]
    configs = [Knockout(sources="audio", targets=("video",), layers=(0, 1)),
               Knockout(sources="video", targets=("audio", "text"), layers=(1, 2)),
               Knockout(sources=("audio", "video"), layers=(2, 3))]
    shared = generate_knockouts(model, batch, configs, max_new_tokens=6, stop_token_ids=[])
    for ko, row in zip(configs, shared):
        ref = generate_with_knockout(model, batch, ko, max_new_tokens=6, stop_token_ids=[])
        assert row.tolist() == ref.new_tokens[0].tolist()
    assert len({tuple(r.tolist()) for r in shared}) > 1


def test_token_shift_against_itself_and_against_another_model(q3omni, q3_media):
    _, _, model = q3omni
    same = token_shift(model, model, video=q3_media["video"], audio=q3_media["audio"], base_gets_audio=True,
                       max_new_tokens=6)
    assert same.kl_av_base.abs().max() < 1e-5 and (same.base_rank == 1).all()
    base = HookedAVModel.from_hf_model(*tiny_qwen3_omni_thinker(seed=1))
    base_batch = base.prepare_inputs("Describe what you hear.", video=q3_media["video"])
    response = base.generate(base_batch, max_new_tokens=6, stop_token_ids=[]).new_tokens[0].tolist()
    result = token_shift(model, base, video=q3_media["video"], audio=q3_media["audio"], response=response)
    assert (result.base_rank == 1).all()  # the base's own greedy tokens
    assert (result.kl_av_base > 1e-3).all()
