"""Hook points, per-layer attention dispatch, decode-step hooks and typed errors."""

from __future__ import annotations

import pytest
import torch

from hooked_av import InputError, LayerIndexError, PlaceholderMismatchError, UnknownHookError

PER_LAYER = ["hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k",
             "attn.hook_v", "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_attn_mask", "attn.hook_attn_scores",
             "attn.hook_pattern", "attn.hook_z", "attn.hook_result", "hook_attn_out", "hook_resid_mid",
             "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post", "hook_mlp_out",
             "hook_resid_post"]


def test_every_hook_point_fires_with_transformer_lens_shapes(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["audio+video"]
    _, cache = model.run_with_cache(batch)
    cfg = model.cfg
    b, n = batch["input_ids"].shape
    expected_names = {"hook_embed", "hook_audio_embeds", "hook_video_embeds", "hook_inputs_embeds",
                      "hook_pos_ids", "ln_final.hook_scale", "ln_final.hook_normalized"}
    expected_names |= {f"blocks.{l}.{s}" for l in range(cfg.n_layers) for s in PER_LAYER}
    assert expected_names <= set(cache.keys())
    shapes = {
        "hook_resid_pre": (b, n, cfg.d_model), "attn.hook_q": (b, n, cfg.n_heads, cfg.d_head),
        "attn.hook_k": (b, n, cfg.n_key_value_heads, cfg.d_head), "attn.hook_rot_q": (b, n, cfg.n_heads, cfg.d_head),
        "attn.hook_attn_mask": (b, 1, n, n), "attn.hook_attn_scores": (b, cfg.n_heads, n, n),
        "attn.hook_pattern": (b, cfg.n_heads, n, n), "attn.hook_z": (b, n, cfg.n_heads, cfg.d_head),
        "mlp.hook_post": (b, n, cfg.d_mlp), "ln1.hook_scale": (b, n, 1), "hook_resid_post": (b, n, cfg.d_model)}
    for suffix, shape in shapes.items():
        assert tuple(cache[f"blocks.1.{suffix}"].shape) == shape, suffix
    assert tuple(cache["hook_pos_ids"].shape) == (3, b, n)


def test_hook_values_are_consistent(omni, omni_batches):
    _, _, model = omni
    _, cache = model.run_with_cache(omni_batches["video"])
    blk = model.blocks[0]
    resid = cache["blocks.0.hook_resid_pre"]
    assert torch.allclose(cache["blocks.0.ln1.hook_normalized"] * cache["blocks.0.ln1.hook_scale"], resid, atol=1e-5)
    z = cache["blocks.0.attn.hook_z"]
    attn_out = torch.einsum("bphd,hdm->bpm", z, blk.attn.W_O)
    assert torch.allclose(attn_out, cache["blocks.0.hook_attn_out"], atol=1e-5)
    pattern, v = cache["blocks.0.attn.hook_pattern"], cache["blocks.0.attn.hook_v"]
    v_per_head = v.repeat_interleave(model.cfg.n_kv_groups, dim=2)
    assert torch.allclose(torch.einsum("bhqk,bkhd->bqhd", pattern, v_per_head), z, atol=1e-5)
    assert torch.allclose(cache["blocks.0.hook_resid_mid"], resid + cache["blocks.0.hook_attn_out"], atol=1e-6)


def test_dispatch_is_fused_unless_scores_or_pattern_are_needed(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["audio+video"]
    paths = lambda: [b.attn.last_path for b in model.blocks]  # noqa: E731
    model(batch)
    assert paths() == ["sdpa", "sdpa"]
    model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_resid_post"))
    assert paths() == ["sdpa", "sdpa"]
    model.run_with_hooks(batch, fwd_hooks=[("blocks.1.attn.hook_pattern", lambda x, hook: None)])
    assert paths() == ["sdpa", "eager"]
    model.run_with_cache(batch, names_filter="blocks.0.attn.hook_attn_scores")
    assert paths() == ["eager", "sdpa"]
    model.run_with_hooks(batch, fwd_hooks=[(lambda n: n.endswith("hook_attn_mask"), lambda x, hook: x)])
    assert paths() == ["sdpa", "sdpa"]
    model(batch)
    assert paths() == ["sdpa", "sdpa"]


def test_eager_and_fused_paths_agree(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["padded_batch"]
    fused = model(batch)
    eager = model.run_with_hooks(batch, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda x, hook: x)])
    keep = batch["attention_mask"].bool()
    assert (fused - eager)[keep].abs().max() < 1e-5


def test_mask_knockout_stays_fused_and_equals_eager_score_edit(omni, omni_batches):
    """Blocking audio -> last prompt position via hook_attn_mask equals editing the eager scores."""
    _, _, model = omni
    batch = omni_batches["audio+video"]
    audio = model.modality_map(batch).mask("audio")[0]
    block = torch.finfo(torch.float32).min

    def knock_mask(mask, hook):
        mask[:, :, -1, audio] = block
        return mask

    def knock_scores(scores, hook):
        scores[:, :, -1, audio] = block
        return scores

    layers = range(model.cfg.n_layers)
    via_mask = model.run_with_hooks(batch, fwd_hooks=[(f"blocks.{l}.attn.hook_attn_mask", knock_mask) for l in layers])
    assert [b.attn.last_path for b in model.blocks] == ["sdpa", "sdpa"]
    via_scores = model.run_with_hooks(batch, fwd_hooks=[(f"blocks.{l}.attn.hook_attn_scores", knock_scores)
                                                        for l in layers])
    clean = model(batch)
    assert torch.allclose(via_mask, via_scores, atol=1e-5)
    assert torch.equal(via_mask[:, :-1], clean[:, :-1])  # only the last query was touched
    assert (via_mask[:, -1] - clean[:, -1]).abs().max() > 1e-4


def test_decode_only_pattern_hook_sees_one_row_over_all_keys(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["audio+video"]
    prompt_len = batch["input_ids"].shape[1]
    rows, prefill_paths = [], []

    def record_row(pattern, hook):
        rows.append(pattern.clone())

    def record_path(x, hook):
        prefill_paths.append((x.shape[1], model.blocks[0].attn.last_path))

    out = model.generate(batch, max_new_tokens=6, stop_token_ids=[],
                         fwd_hooks=[("blocks.0.hook_attn_out", record_path)],
                         decode_fwd_hooks=[("blocks.0.attn.hook_pattern", record_row)])
    assert prefill_paths[0] == (prompt_len, "sdpa")  # the prefill stayed fused
    assert all(path == "eager" for n, path in prefill_paths[1:]) and all(n == 1 for n, _ in prefill_paths[1:])
    assert len(rows) == 5
    for step, row in enumerate(rows):
        assert row.shape == (1, model.cfg.n_heads, 1, prompt_len + step + 1)
        assert torch.allclose(row.sum(-1), torch.ones(1, model.cfg.n_heads, 1), atol=1e-5)
    # Each decode row equals the same row of a full forward over the generated sequence: the KV cache is used.
    full_batch = {**batch, "input_ids": out.sequences, "attention_mask": torch.ones_like(out.sequences)}
    _, cache = model.run_with_cache(full_batch, names_filter="blocks.0.attn.hook_pattern")
    full = cache["blocks.0.attn.hook_pattern"]
    for step, row in enumerate(rows):
        q = prompt_len + step
        assert torch.allclose(row[0, :, 0], full[0, :, q, :q + 1], atol=1e-5)
        assert row[0, :, 0, :prompt_len].sum(-1).min() > 0.01  # not attending only to itself


def test_hooks_fire_at_every_decode_step_and_can_steer(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["text"]
    seen = []
    out = model.generate(batch, max_new_tokens=5, stop_token_ids=[],
                         fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: seen.append(x.shape[1]))])
    assert seen == [batch["input_ids"].shape[1], 1, 1, 1, 1]
    target = 65

    def force(logits_in, hook):  # push the final residual onto one token's direction
        return logits_in + 1e4 * model.tokens_to_residual_directions(target) / model.ln_final.w.abs().max()

    steered = model.generate(batch, max_new_tokens=4, stop_token_ids=[],
                             fwd_hooks=[("ln_final.hook_normalized", force)])
    assert steered.new_tokens.tolist() == [[target] * 4]
    assert out.new_tokens.tolist() != steered.new_tokens.tolist()


def test_sampling_is_reproducible_with_a_seed(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["text"]
    a = model.generate(batch, max_new_tokens=8, do_sample=True, temperature=2.0, top_k=50, seed=3)
    b = model.generate(batch, max_new_tokens=8, do_sample=True, temperature=2.0, top_k=50, seed=3)
    greedy = model.generate(batch, max_new_tokens=8)
    assert torch.equal(a.sequences, b.sequences)
    assert not torch.equal(a.sequences, greedy.sequences)


def test_unknown_hook_name_is_a_typed_error(omni, omni_batches):
    _, _, model = omni
    with pytest.raises(UnknownHookError, match="hook_patern"):
        model.run_with_hooks(omni_batches["text"], fwd_hooks=[("blocks.0.attn.hook_patern", lambda x, hook: x)])
    with pytest.raises(UnknownHookError, match="Did you mean"):
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid", lambda x, hook: x)]):
            pass


def test_layer_out_of_range_is_a_typed_error(omni, omni_batches):
    _, _, model = omni
    with pytest.raises(LayerIndexError, match="2 layers"):
        model.run_with_hooks(omni_batches["text"], fwd_hooks=[("blocks.7.hook_resid_post", lambda x, hook: x)])


def test_hooks_are_removed_after_an_exception(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["text"]

    def boom(x, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(batch, fwd_hooks=[("blocks.0.attn.hook_pattern", boom)])
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", boom)]):
            model(batch)
    with pytest.raises(RuntimeError, match="boom"):
        model.generate(batch, max_new_tokens=3, decode_fwd_hooks=[("blocks.1.hook_resid_post", boom)],
                       stop_token_ids=[])
    assert not any(hp.fwd_hooks for hp in model.hook_dict.values())
    model(batch)
    assert [b.attn.last_path for b in model.blocks] == ["sdpa", "sdpa"]


def test_placeholder_count_mismatch_is_a_typed_error(omni, omni_batches):
    _, processor, model = omni
    batch = dict(omni_batches["audio"])
    ids = batch["input_ids"].clone()
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    ids[0, (ids[0] == audio_id).nonzero()[0]] = processor.tokenizer.convert_tokens_to_ids("a")
    with pytest.raises(PlaceholderMismatchError, match="99 audio placeholder tokens but the audio encoder returned 100"):
        model({**batch, "input_ids": ids})
    no_media = {k: v for k, v in batch.items() if k not in ("input_features", "feature_attention_mask")}
    with pytest.raises(PlaceholderMismatchError, match="no audio input"):
        model(no_media)


def test_use_audio_in_video_must_match_the_batch(omni, omni_batches):
    _, _, model = omni
    with pytest.raises(InputError, match="use_audio_in_video=False"):
        model({**omni_batches["use_audio_in_video"], "use_audio_in_video": False})
    with pytest.raises(InputError, match="use_audio_in_video=True"):
        model({**omni_batches["audio+video"], "use_audio_in_video": True})
    with pytest.raises(InputError, match="no input_ids"):
        model({"attention_mask": omni_batches["text"]["attention_mask"]})


def test_permanent_hooks_check_names_and_persist_until_reset(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["text"]
    with pytest.raises(UnknownHookError):
        model.add_hook("blocks.0.hook_nothing", lambda x, hook: x)
    calls = []
    model.add_hook("blocks.0.hook_resid_pre", lambda x, hook: calls.append(1))
    model(batch)
    model(batch)
    assert len(calls) == 2
    model.reset_hooks()
    model(batch)
    assert len(calls) == 2


def test_full_omni_model_wraps_its_thinker(omni, omni_batches):
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    from hooked_av import HookedAVModel

    hf_thinker, processor, model = omni
    config = Qwen2_5OmniConfig(thinker_config=hf_thinker.config.to_dict(), enable_audio_output=False)
    full = Qwen2_5OmniForConditionalGeneration(config).eval()
    full.thinker.load_state_dict(hf_thinker.state_dict())
    wrapped = HookedAVModel.from_hf_model(full, processor)
    assert wrapped.embed is full.thinker.model.language_model.embed_tokens
    batch = omni_batches["audio+video"]
    assert torch.allclose(wrapped(batch), model(batch), atol=1e-5)


def test_a_misspelt_hook_name_gets_close_matches_with_its_layer(omni):
    _, _, model = omni
    with pytest.raises(UnknownHookError) as err:
        model.add_hook("blocks.0.hook_resid_psot", lambda x, hook: x)
    assert "'blocks.0.hook_resid_post'" in str(err.value)
    with pytest.raises(UnknownHookError) as err:
        model.add_hook("blocks.1.attn.hook_patern", lambda x, hook: x)
    assert "'blocks.1.attn.hook_pattern'" in str(err.value)
    with pytest.raises(UnknownHookError, match="'hook_inputs_embeds'"):
        model.add_hook("hook_input_embeds", lambda x, hook: x)


def test_a_misspelt_name_in_a_names_filter_list_raises(omni, omni_batches):
    _, _, model = omni
    with pytest.raises(UnknownHookError, match="blocks.0.hook_resid_post"):
        model.run_with_cache(omni_batches["text"],
                             names_filter=["blocks.1.hook_resid_post", "blocks.0.hook_resid_psot"])
    with pytest.raises(UnknownHookError, match="blocks.1.hook_resid_post"):
        model.run_with_cache(omni_batches["text"], names_filter="blocks.1.hook_resid_pots")
    _, cache = model.run_with_cache(omni_batches["text"], names_filter=["blocks.1.hook_resid_post"])
    assert list(cache.keys()) == ["blocks.1.hook_resid_post"]


def test_negative_layers_in_hook_names_are_normalised(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["text"]
    seen = {}
    model.run_with_hooks(batch, fwd_hooks=[("blocks.-1.hook_resid_post",
                                            lambda x, hook: seen.setdefault(hook.name, x))])
    assert list(seen) == [f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    _, cache = model.run_with_cache(batch, names_filter=["blocks.-2.hook_resid_post"])
    assert list(cache.keys()) == [f"blocks.{model.cfg.n_layers - 2}.hook_resid_post"]
    assert torch.equal(cache["blocks.-2.hook_resid_post"], cache["blocks.0.hook_resid_post"])
    with pytest.raises(LayerIndexError, match=r"-2\.\.-1"):
        model.add_hook("blocks.-3.hook_resid_post", lambda x, hook: x)


def test_generate_needs_at_least_one_new_token(omni, omni_batches):
    _, _, model = omni
    with pytest.raises(InputError, match="max_new_tokens must be at least 1, got 0"):
        model.generate(omni_batches["text"], max_new_tokens=0)


def test_a_string_is_wrapped_in_the_chat_template(omni, omni_batches):
    _, _, model = omni
    batch = model.prepare_inputs(PROMPT_TEXT)
    assert torch.equal(model(PROMPT_TEXT), model(batch))
    assert torch.equal(model.generate(PROMPT_TEXT, max_new_tokens=4).sequences,
                       model.generate(batch, max_new_tokens=4).sequences)
    pair = [PROMPT_TEXT, "Hi"]
    assert torch.equal(model(pair), model(model.prepare_inputs(pair)))
    _, cache = model.run_with_cache(PROMPT_TEXT, names_filter="blocks.0.hook_resid_post")
    assert cache.modality_map.counts()["text"] == len(PROMPT_TEXT)  # one byte token per character here
    with pytest.raises(InputError, match="a string, a list of strings, a processor batch"):
        model(3.5)


PROMPT_TEXT = "What is this?"


def test_return_type_both_gives_logits_and_loss(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["audio"]
    logits, loss = model(batch, return_type="both")
    assert torch.equal(logits, model(batch))
    assert torch.equal(loss, model(batch, return_type="loss"))
    with pytest.raises(InputError, match="'both'"):
        model(batch, return_type="probs")


def test_token_helpers_use_the_chat_template_and_media(omni, media):
    _, processor, model = omni
    tok = processor.tokenizer
    ids = model.to_tokens(PROMPT_TEXT, audio=media["audio"])
    batch = model.prepare_inputs(PROMPT_TEXT, audio=media["audio"])
    assert torch.equal(ids, batch["input_ids"])
    raw = model.to_tokens(PROMPT_TEXT, chat_template=False)
    assert raw[0].tolist() == tok.encode(PROMPT_TEXT, add_special_tokens=False)
    strs = model.to_str_tokens(PROMPT_TEXT, audio=media["audio"])
    assert len(strs) == ids.shape[1] and strs[:3] == ["<|im_start|>", "s", "y"]
    assert strs.count("<|AUDIO|>") == int(model.modality_map(batch).mask("audio").sum())
    assert model.to_str_tokens(batch) == strs and model.to_str_tokens(ids[0]) == strs
    assert model.to_string(raw[0]) == PROMPT_TEXT and model.to_string(raw) == [PROMPT_TEXT]
    # one token id (a 0-d tensor, as logits.argmax() gives, or an int) decodes to its string, as in TransformerLens
    assert model.to_string(raw[0, 0]) == model.to_string(int(raw[0, 0])) == tok.decode([int(raw[0, 0])])
    audio = model.modality_map(batch).positions("audio")
    assert model.get_token_position("<|AUDIO|>", batch) == int(audio[0])
    assert model.get_token_position("<|AUDIO|>", PROMPT_TEXT, mode="last", audio=media["audio"]) == int(audio[-1])
    assert model.get_token_position(tok.convert_tokens_to_ids("<|audio_bos|>"), ids) == int(audio[0]) - 1
    with pytest.raises(InputError, match="not in the input"):
        model.get_token_position("<|VIDEO|>", batch)
    with pytest.raises(InputError, match="chat_template=False"):
        model.to_tokens(PROMPT_TEXT, audio=media["audio"], chat_template=False)


def test_hook_result_gives_per_head_outputs_and_keeps_the_layer_fused(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["audio"]
    _, cache = model.run_with_cache(batch, names_filter=["blocks.1.attn.hook_result", "blocks.1.attn.hook_z",
                                                         "blocks.1.hook_attn_out"])
    assert [b.attn.last_path for b in model.blocks] == ["sdpa", "sdpa"]
    result = cache["blocks.1.attn.hook_result"]
    assert result.shape == (1, batch["input_ids"].shape[1], model.cfg.n_heads, model.cfg.d_model)
    attn = model.blocks[1].attn
    by_hand = torch.einsum("bphd,hdm->bphm", cache["blocks.1.attn.hook_z"], attn.W_O)
    assert torch.allclose(result, by_hand, atol=1e-5)
    assert torch.allclose(result.sum(2) + attn.b_O, cache["blocks.1.hook_attn_out"], atol=1e-5)

    def zero_head(x, hook, dim):
        x = x.clone()
        x.select(dim, 2).zero_()
        return x

    via_result = model.run_with_hooks(batch, fwd_hooks=[("blocks.0.attn.hook_result",
                                                         lambda x, hook: zero_head(x, hook, 2))])
    via_z = model.run_with_hooks(batch, fwd_hooks=[("blocks.0.attn.hook_z", lambda x, hook: zero_head(x, hook, 2))])
    assert torch.allclose(via_result, via_z, atol=1e-4) and not torch.allclose(via_result, model(batch), atol=1e-4)


def test_transformer_lens_4_utilities_name_our_hooks(omni):
    """docs/architecture.md points TransformerLens 3 habits (`from transformer_lens import utils`) to
    `transformer_lens.utilities`; the names its get_act_name writes are hook points here, negative layers too."""
    from transformer_lens.utilities import get_act_name

    _, _, model = omni
    with pytest.raises(ImportError, match="utilities"):
        from transformer_lens import utils  # noqa: F401
    for name in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "pattern", "attn_scores", "q", "k",
                 "v", "z", "result", "rot_q", "rot_k", "pre", "post"):
        assert model.hook_name(get_act_name(name, 1)) in model.hook_dict, name
    assert model.hook_name(get_act_name("resid_post", -1)) == f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
