"""Faithfulness of the hooked Qwen3-Omni-MoE thinker against HF's own implementation (fp32, tiny random weights):
logits, generation, hidden states, attention, MoE routing, DeepStack, q/k hooks, positions and the traps."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from hooked_av import HookedAVModel, InputError, Modality, UnsupportedCheckpointError
from hooked_av.testing.tiny import synthetic_audio, synthetic_video
from hooked_av.testing.tiny_qwen3_omni import full_qwen3_omni

from .conftest import OMNI_CASES, PROMPT

TOL = 1e-4
CASES = [*OMNI_CASES, "padded_batch"]


def max_diff_at_real_positions(ours, ref, attention_mask):
    keep = attention_mask.bool()
    return (ours[keep] - ref[keep]).abs().max().item()


@pytest.mark.parametrize("case", CASES)
def test_logits_match_hf(q3omni, q3_batches, case):
    hf_model, _, model = q3omni
    batch = q3_batches[case]
    ours = model(batch)
    ref = hf_model(**batch).logits
    assert ours.shape == ref.shape
    assert max_diff_at_real_positions(ours, ref, batch["attention_mask"]) < TOL


PER_LAYER = ["hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.q_norm.hook_scale",
             "attn.q_norm.hook_normalized", "attn.k_norm.hook_scale", "attn.k_norm.hook_normalized", "attn.hook_q",
             "attn.hook_k", "attn.hook_v", "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_attn_mask",
             "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "attn.hook_result", "hook_attn_out", "hook_resid_mid",
             "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_router_logits", "mlp.hook_expert_indices",
             "mlp.hook_expert_weights", "hook_mlp_out", "hook_resid_post"]


def test_every_hook_point_fires_with_its_shape(q3omni, q3_batches):
    _, _, model = q3omni
    batch = q3_batches["padded_batch"]
    _, cache = model.run_with_cache(batch)
    cfg = model.cfg
    b, n = batch["input_ids"].shape
    expected = {"hook_embed", "hook_audio_embeds", "hook_video_embeds", "hook_inputs_embeds", "hook_pos_ids",
                "ln_final.hook_scale", "ln_final.hook_normalized"}
    expected |= {f"blocks.{l}.{s}" for l in range(cfg.n_layers) for s in PER_LAYER}
    expected |= {f"blocks.{l}.hook_deepstack" for l in range(3)}
    assert set(cache.keys()) == expected  # every hook point of the model, and no other
    assert set(cache.keys()) == set(model.hook_dict) - {"hook_image_embeds"}
    n_experts, k = 8, 2
    shapes = {"attn.hook_q": (b, n, cfg.n_heads, cfg.d_head), "attn.hook_k": (b, n, cfg.n_key_value_heads, cfg.d_head),
              "attn.q_norm.hook_scale": (b, n, cfg.n_heads, 1), "mlp.hook_router_logits": (b, n, n_experts),
              "mlp.hook_expert_indices": (b, n, k), "mlp.hook_expert_weights": (b, n, k),
              "attn.hook_result": (b, n, cfg.n_heads, cfg.d_model),
              "hook_deepstack": (b, n, cfg.d_model), "hook_resid_post": (b, n, cfg.d_model)}
    for suffix, shape in shapes.items():
        assert tuple(cache[f"blocks.1.{suffix}"].shape) == shape, suffix
    assert cfg.d_head == 32 != cfg.d_model // cfg.n_heads  # head_dim set explicitly, as in the real model
    assert cache["hook_pos_ids"].shape == (3, b, n) and cache["hook_pos_ids"].is_floating_point()


@pytest.mark.parametrize("case", ["image", "audio+video", "use_audio_in_video", "padded_batch"])
def test_greedy_generation_matches_hf(q3omni, q3_batches, case):
    hf_model, _, model = q3omni
    batch = q3_batches[case]
    out = model.generate(batch, max_new_tokens=16)
    ref = hf_model.generate(**batch, max_new_tokens=16, do_sample=False,
                            eos_token_id=model.adapter.stop_token_ids())
    assert torch.equal(out.sequences, ref)
    assert len(set(out.new_tokens[0].tolist())) > 3  # the tiny model does not just repeat one token


def test_first_decode_position_follows_hf_rope_delta_after_audio_in_video(q3omni):
    """After audio in video HF resumes from the end of the last run, which can lie inside the video block's
    range (wide frames, short audio): the first generated token sits at max position + 1, not last + 1."""
    hf_model, _, model = q3omni
    batch = model.prepare_inputs("Hi", video=synthetic_video(seconds=1.0, height=160, width=1280),
                                 audio=synthetic_audio(seconds=1.0), use_audio_in_video=True)
    prompt = model.embed_prompt(batch)
    assert prompt.positions.max() > prompt.positions[:, :, -1].max()  # the case this test is about
    _, delta = hf_model.model.get_rope_index(batch["input_ids"], None, batch["video_grid_thw"],
                                             batch["attention_mask"], True, batch["feature_attention_mask"].sum(-1),
                                             batch["video_second_per_grid"])
    state = model.prefill(prompt, max_new_tokens=1)
    expected = batch["input_ids"].shape[1] + delta
    assert torch.equal(state.next_pos, expected.view(1, 1, 1).expand(3, 1, 1).to(state.next_pos.dtype))


def test_resid_post_includes_deepstack_and_equals_hf_hidden_states_without_it(q3omni, q3_batches):
    hf_model, _, model = q3omni
    batch = q3_batches["use_audio_in_video"]
    _, cache = model.run_with_cache(batch)
    hidden = hf_model(**batch, output_hidden_states=True).hidden_states
    n = model.cfg.n_layers
    assert torch.allclose(cache["hook_inputs_embeds"], hidden[0], atol=TOL)
    for layer in range(n - 1):
        post = cache[f"blocks.{layer}.hook_resid_post"]
        # HF records a layer's output before the DeepStack add; ours includes it, so resid_post = next resid_pre.
        deepstack = cache[f"blocks.{layer}.hook_deepstack"] if layer < 3 else 0
        assert torch.allclose(post - deepstack, hidden[layer + 1], atol=TOL)
        assert torch.equal(post, cache[f"blocks.{layer + 1}.hook_resid_pre"])
    assert torch.allclose(model.ln_final(cache[f"blocks.{n - 1}.hook_resid_post"]), hidden[n], atol=TOL)


def test_deepstack_hook_is_zero_outside_visual_positions(q3omni, q3_batches):
    _, _, model = q3omni
    batch = q3_batches["image"]
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_deepstack"))
    assert sorted(cache.keys()) == [f"blocks.{l}.hook_deepstack" for l in range(3)]
    visual = cache.modality_map.mask("image", "video")
    for layer in range(3):
        ds = cache[f"blocks.{layer}.hook_deepstack"]
        assert ds.shape == (1, batch["input_ids"].shape[1], model.cfg.d_model)
        assert (ds[~visual] == 0).all() and (ds[visual].abs().sum(-1) > 0).all()
    _, text_cache = model.run_with_cache(q3_batches["audio"], names_filter=lambda n: n.endswith("hook_deepstack"))
    assert len(text_cache.keys()) == 0  # no vision input: nothing is injected


def test_zeroing_deepstack_equals_hf_without_deepstack(q3omni, q3_batches, monkeypatch):
    hf_model, _, model = q3omni
    batch = q3_batches["audio+video"]
    zero = [(f"blocks.{l}.hook_deepstack", lambda x, hook: torch.zeros_like(x)) for l in range(3)]
    ablated = model.run_with_hooks(batch, fwd_hooks=zero)
    assert (ablated - model(batch)).abs().max() > 1e-3
    monkeypatch.setattr(hf_model.model.language_model, "_deepstack_process", lambda hidden, mask, embeds: hidden)
    ref = hf_model(**batch).logits
    assert (ablated - ref).abs().max() < TOL


def test_moe_routing_is_hf_routing_at_every_position(q3omni, q3_batches):
    hf_model, _, model = q3omni
    batch = q3_batches["padded_batch"]
    _, cache = model.run_with_cache(batch, names_filter=lambda n: ".mlp.hook_" in n)
    hf_logits = hf_model(**batch, output_router_logits=True).router_logits
    keep = batch["attention_mask"].bool()
    k = hf_model.config.text_config.num_experts_per_tok
    for layer, ref in enumerate(hf_logits):
        ref = ref.view(*keep.shape, -1)
        ours = cache[f"blocks.{layer}.mlp.hook_router_logits"]
        assert ours.shape == ref.shape
        assert (ours[keep] - ref[keep]).abs().max() < TOL
        probs = torch.softmax(ref, dim=-1, dtype=torch.float32)
        weights, indices = torch.topk(probs, k, dim=-1)
        assert torch.equal(cache[f"blocks.{layer}.mlp.hook_expert_indices"][keep], indices[keep])
        ours_w = cache[f"blocks.{layer}.mlp.hook_expert_weights"]
        assert torch.allclose(ours_w[keep], (weights / weights.sum(-1, keepdim=True))[keep], atol=1e-6)
        assert torch.allclose(ours_w.sum(-1)[keep], torch.ones(int(keep.sum())), atol=1e-6)


def test_router_logits_hook_reroutes_tokens(q3omni, q3_batches):
    _, _, model = q3omni
    batch = q3_batches["audio+video"]
    _, clean = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_expert_indices"))
    expert = int(clean["blocks.1.mlp.hook_expert_indices"].flatten().mode().values)

    def mask_out(logits, hook):
        logits[..., expert] = float("-inf")
        return logits

    with model.hooks(fwd_hooks=[("blocks.1.mlp.hook_router_logits", mask_out)]):
        logits, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_expert_indices"))
    assert not (cache["blocks.1.mlp.hook_expert_indices"] == expert).any()
    assert torch.equal(cache["blocks.0.mlp.hook_expert_indices"], clean["blocks.0.mlp.hook_expert_indices"])
    assert (logits - model(batch)).abs().max() > 1e-3


def test_q_and_k_hooks_are_after_the_qk_norm_and_before_rope(q3omni, q3_batches):
    hf_model, _, model = q3omni
    batch = q3_batches["video"]
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n.startswith("blocks.1.") or n == "hook_pos_ids")
    hf_attn = hf_model.model.language_model.layers[1].self_attn
    x = hf_model.model.language_model.layers[1].input_layernorm(cache["blocks.1.hook_resid_pre"])
    b, n, _ = x.shape
    q = hf_attn.q_norm(hf_attn.q_proj(x).view(b, n, -1, model.cfg.d_head))
    k = hf_attn.k_norm(hf_attn.k_proj(x).view(b, n, -1, model.cfg.d_head))
    assert torch.allclose(cache["blocks.1.attn.hook_q"], q, atol=1e-5)
    assert torch.allclose(cache["blocks.1.attn.hook_k"], k, atol=1e-5)
    positions = cache["hook_pos_ids"]
    cos, sin = hf_model.model.language_model.rotary_emb(x, positions)
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import apply_rotary_pos_emb
    rq, rk = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    assert torch.allclose(cache["blocks.1.attn.hook_rot_q"], rq.transpose(1, 2), atol=1e-5)
    assert torch.allclose(cache["blocks.1.attn.hook_rot_k"], rk.transpose(1, 2), atol=1e-5)


def test_eager_and_fused_dispatch_agree_and_patterns_equal_hf_eager(q3omni, q3_batches):
    hf_model, _, model = q3omni
    batch = q3_batches["padded_batch"]
    fused = model(batch)
    assert all(b.attn.last_path == "sdpa" for b in model.blocks)
    logits, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_pattern"))
    assert all(b.attn.last_path == "eager" for b in model.blocks)
    assert max_diff_at_real_positions(logits, fused, batch["attention_mask"]) < TOL
    hf_model.set_attn_implementation("eager")
    try:
        attentions = hf_model(**batch, output_attentions=True).attentions
    finally:
        hf_model.set_attn_implementation("sdpa")
    keep = batch["attention_mask"].bool()
    for layer, ref in enumerate(attentions):
        diff = (cache[f"blocks.{layer}.attn.hook_pattern"] - ref).abs().amax(dim=(1, 3))
        assert diff[keep].max() < TOL


def test_fractional_video_positions_at_3_fps(q3omni, q3_media):
    """At 3 fps a frame pair spans 2/3 s = 8.67 positions: positions stay floats, as in HF."""
    hf_model, _, model = q3omni
    batch = model.prepare_inputs(PROMPT, video=synthetic_video(seconds=2.0, fps=3.0), audio=q3_media["audio"],
                                 fps=3.0)
    positions = model.embed_prompt(batch).positions
    assert positions.is_floating_point() and (positions.frac() != 0).any()
    assert (model(batch) - hf_model(**batch).logits).abs().max() < TOL


# ---- modality map and positions -------------------------------------------------------------------------
def test_audio_in_video_interleaves_per_second_grid(q3omni, q3_batches):
    _, _, model = q3omni
    batch = q3_batches["use_audio_in_video"]
    codes = model.modality_map(batch).codes[0]
    block = codes[(codes == Modality.VIDEO) | (codes == Modality.AUDIO)]
    runs = [(int(c), len(list(g))) for c, g in itertools.groupby(block.tolist())]
    per_grid = int(batch["video_grid_thw"][0, 1:].prod()) // 4
    # 2 s at 2 fps: two 1 s frame pairs, each followed by that second's 13 audio tokens
    assert runs == [(Modality.VIDEO, per_grid), (Modality.AUDIO, 13), (Modality.VIDEO, per_grid),
                    (Modality.AUDIO, 13)]


def test_left_padded_batch_rows_equal_single_runs(q3omni, q3_batches, q3_media):
    _, _, model = q3omni
    batch = q3_batches["padded_batch"]
    mm = model.modality_map(batch)
    assert mm.mask("pad")[1].sum() > 0 and mm.mask("pad")[0].sum() == 0
    single = model.prepare_inputs("What do you hear?", video=q3_media["video2"], audio=q3_media["audio2"])
    n = single["input_ids"].shape[1]
    assert torch.equal(batch["input_ids"][1, -n:], single["input_ids"][0])
    # Whisper pads the shorter clip before its STFT, which moves its last mel frame (trap 12): loose tolerance.
    assert (model(batch)[1, -n:] - model(single)[0]).abs().max() < 5e-2


# ---- traps that would silently give wrong results -------------------------------------------------------
def test_forward_without_attention_mask_equals_with_it(q3omni, q3_batches):
    _, _, model = q3omni
    batch = q3_batches["use_audio_in_video"]
    without = {k: v for k, v in batch.items() if k != "attention_mask"}
    assert torch.equal(model(without), model(batch))


def test_use_audio_in_video_missing_on_an_interleaved_batch_is_refused(q3omni, q3_batches):
    _, _, model = q3omni
    batch = dict(q3_batches["use_audio_in_video"], use_audio_in_video=False)
    with pytest.raises(InputError, match="use_audio_in_video"):
        model(batch)


def test_processor_clock_other_than_the_models_is_refused(q3omni, q3_media):
    _, _, model = q3omni
    ok = model.prepare_inputs(PROMPT, video=q3_media["video"], audio=q3_media["audio"], use_audio_in_video=True)
    model(ok)
    bad = model.prepare_inputs(PROMPT, video=q3_media["video"], audio=q3_media["audio"], use_audio_in_video=True,
               position_id_per_seconds=25)
    with pytest.raises(InputError, match="position_id_per_seconds"):
        model(bad)


def test_missing_seconds_per_grid_is_refused(q3omni, q3_batches):
    _, _, model = q3omni
    batch = {k: v for k, v in q3_batches["video"].items() if k != "video_second_per_grid"}
    with pytest.raises(InputError, match="video_second_per_grid"):
        model(batch)


def test_config_with_default_token_ids_is_refused(q3omni):
    hf_model, processor, _ = q3omni
    wrong = copy.copy(hf_model)
    wrong.config = copy.deepcopy(hf_model.config)
    wrong.config.audio_token_id = 151646  # the config class default: Qwen2.5-Omni's id
    with pytest.raises(UnsupportedCheckpointError, match="placeholder"):
        HookedAVModel.from_hf_model(wrong, processor)


@pytest.mark.parametrize("edit, match", [
    (lambda c: delattr(c, "vision_start_token_id"), "vision_start_token_id"),
    (lambda c: c.text_config.rope_parameters.pop("mrope_section"), "rotary sections"),
], ids=["no_vision_start_id", "no_mrope_section"])
def test_config_fields_hf_does_not_require_are_required(q3omni, edit, match):
    hf_model, _, _ = q3omni
    wrong = copy.copy(hf_model)
    wrong.config = copy.deepcopy(hf_model.config)
    edit(wrong.config)
    with pytest.raises(UnsupportedCheckpointError, match=match):
        HookedAVModel.from_hf_model(wrong)


@pytest.mark.parametrize("sections", [[6, 5, 4], [4, 6, 6]], ids=["wrong_sum", "interleaved_overflow"])
def test_mrope_sections_that_do_not_fit_the_head_are_refused(q3omni, sections):
    hf_model, _, _ = q3omni
    wrong = copy.copy(hf_model)
    wrong.config = copy.deepcopy(hf_model.config)
    wrong.config.text_config.rope_parameters["mrope_section"] = sections  # HF would clip them, silently
    with pytest.raises(UnsupportedCheckpointError, match="rotary"):
        HookedAVModel.from_hf_model(wrong)


# ---- the full model ---------------------------------------------------------------------------------------
def test_full_model_wraps_its_thinker_and_shares_weights(q3omni, q3_batches):
    hf_model, processor, model = q3omni
    wrapped = HookedAVModel.from_hf_model(full_qwen3_omni(hf_model), processor)
    assert wrapped.adapter.hf_model is hf_model
    hf_experts = hf_model.model.language_model.layers[0].mlp.experts
    assert wrapped.blocks[0].mlp.experts is hf_experts and wrapped.blocks[0].mlp.router_weight is \
        hf_model.model.language_model.layers[0].mlp.gate.weight
    assert torch.equal(wrapped(q3_batches["image"]), model(q3_batches["image"]))


def test_decompose_resid_includes_deepstack_and_sums_to_the_residual(q3omni, q3_batches):
    _, _, model = q3omni
    _, cache = model.run_with_cache(q3_batches["image"])
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels[:5] == ["embed", "0_attn_out", "0_mlp_out", "0_deepstack", "1_attn_out"]
    assert len(labels) == 1 + 2 * model.cfg.n_layers + 3
    assert torch.allclose(parts.sum(0), cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"], atol=1e-4)
    scaled = cache.decompose_resid(apply_ln=True)
    assert torch.allclose(scaled.sum(0), cache["ln_final.hook_normalized"], atol=1e-4)
    mid = cache.decompose_resid(layer=2, return_labels=True)[1]
    assert mid[-1] == "1_deepstack" and "2_deepstack" not in mid
    assert "0_deepstack" not in cache.decompose_resid(mode="mlp", return_labels=True)[1]


def test_the_real_30b_a3b_thinker_config_builds_on_the_meta_device():
    """The released sizes (notes: 48 layers, 2048 wide, 32 / 4 heads of 128, 128 experts top-8, mrope [24, 20, 20]
    interleaved, DeepStack after layers 0-2), built without memory: the hooked decoder maps onto them."""
    from transformers import Qwen3OmniMoeThinkerConfig, Qwen3OmniMoeThinkerForConditionalGeneration

    config = Qwen3OmniMoeThinkerConfig(
        audio_config=dict(num_mel_bins=128, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                          d_model=1280, downsample_hidden_size=480, output_dim=2048, n_window=50,
                          n_window_infer=800),
        vision_config=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=2048,
                           num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24]),
        text_config=dict(vocab_size=152064, hidden_size=2048, num_hidden_layers=48, num_attention_heads=32,
                         num_key_value_heads=4, head_dim=128, intermediate_size=768, moe_intermediate_size=768,
                         num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [24, 20, 20],
                                          "interleaved": True}),
        audio_token_id=151675, image_token_id=151655, video_token_id=151656, audio_start_token_id=151669,
        vision_start_token_id=151652, position_id_per_seconds=13, tie_word_embeddings=False)
    with torch.device("meta"):
        hf_model = Qwen3OmniMoeThinkerForConditionalGeneration(config)
    model = HookedAVModel.from_hf_model(hf_model)
    cfg = model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head) == (48, 2048, 32, 4, 128)
    assert cfg.rope_axis_of_channel == (0, 1, 2) * 20 + (0,) * 4  # T H W repeated 20 times, then T T T T
    assert all(b.mlp.n_experts == 128 and b.mlp.top_k == 8 and b.mlp.norm_topk_prob for b in model.blocks)
    assert [l for l, b in enumerate(model.blocks) if b.injection_hook_name] == [0, 1, 2]
    n_params = sum(p.numel() for p in hf_model.parameters())
    assert 31.6e9 < n_params < 31.8e9 and n_params * 2 / 2 ** 30 == pytest.approx(59.1, abs=0.1)  # bf16 GiB
