"""TransformerLens' cache utilities and patching functions work on HookedAVModel, on multimodal batches."""

from __future__ import annotations

import torch
from transformer_lens import patching

from hooked_av import AVActivationCache


def test_cfg_and_weight_views_have_transformer_lens_shapes(omni):
    hf_model, _, model = omni
    cfg = model.cfg
    assert cfg.normalization_type == "RMS" and cfg.final_rms
    blk = model.blocks[0]
    assert blk.attn.W_O.shape == (cfg.n_heads, cfg.d_head, cfg.d_model)
    assert blk.attn.W_Q.shape == (cfg.n_heads, cfg.d_model, cfg.d_head)
    assert blk.attn.W_K.shape == (cfg.n_key_value_heads, cfg.d_model, cfg.d_head)
    assert blk.mlp.W_out.shape == (cfg.d_mlp, cfg.d_model)
    assert model.W_U.shape == (cfg.d_model, cfg.d_vocab) and model.b_U.shape == (cfg.d_vocab,)
    hf_o = hf_model.model.language_model.layers[0].self_attn.o_proj.weight
    assert blk.attn.W_O.untyped_storage().data_ptr() == hf_o.untyped_storage().data_ptr()
    # head h's W_O block is columns h*d_head:(h+1)*d_head of o_proj
    assert torch.equal(blk.attn.W_O[1], hf_o[:, cfg.d_head:2 * cfg.d_head].T)


def test_accumulated_resid_with_ln_reproduces_logits(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["audio+video"]
    logits, cache = model.run_with_cache(batch)
    assert isinstance(cache, AVActivationCache)
    stack, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)
    assert labels[-1] == "final_post" and stack.shape[0] == model.cfg.n_layers + 1
    lens_logits = stack[-1] @ model.W_U + model.b_U
    assert torch.allclose(lens_logits, logits, atol=1e-4)


def test_decompose_resid_sums_to_the_residual_at_multimodal_positions(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["use_audio_in_video"]
    _, cache = model.run_with_cache(batch)
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels[0] == "embed" and len(labels) == 1 + 2 * model.cfg.n_layers
    final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    assert torch.allclose(parts.sum(0), final, atol=1e-5)
    assert torch.equal(cache["hook_embed"], model.embed(batch["input_ids"]))  # restored after the call
    # With the cached final-norm scale the components sum to ln_final's normalized input.
    scaled = cache.decompose_resid(apply_ln=True)
    assert torch.allclose(scaled.sum(0), cache["ln_final.hook_normalized"], atol=1e-5)


def test_logit_attrs_sum_to_the_logit(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["audio+video"]
    logits, cache = model.run_with_cache(batch)
    token = int(logits[0, -1].argmax())
    parts = cache.decompose_resid(pos_slice=-1)  # logit_attrs applies the cached final-norm scale itself
    attrs = cache.logit_attrs(parts, tokens=torch.tensor([token]), pos_slice=-1)
    assert torch.allclose(attrs.sum(0), logits[:, -1, token], atol=1e-4)


def test_activation_patching_restores_the_clean_run(omni):
    _, processor, model = omni
    tok = processor.tokenizer
    clean = torch.tensor([tok.encode("The cat sat on the mat")])
    corrupted = torch.tensor([tok.encode("The bat sat on the mat")])
    clean_logits, clean_cache = model.run_with_cache(clean)
    target = int(clean_logits[0, -1].argmax())

    def metric(logits):
        return logits[0, -1, target]

    result = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
    assert result.shape == (model.cfg.n_layers, clean.shape[1])
    # (byte-level tokens: one differing byte) Patching the residual at the only differing position in layer 0 restores the clean logit.
    diff_pos = int((clean != corrupted).nonzero()[0, 1])
    assert torch.allclose(result[0, diff_pos], metric(clean_logits), atol=1e-4)
    assert not torch.allclose(result[0, 0], metric(clean_logits), atol=1e-4)


def test_cache_carries_the_modality_map(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["padded_batch"]
    _, cache = model.run_with_cache(batch, names_filter="hook_inputs_embeds")
    assert torch.equal(cache.modality_map.codes, model.modality_map(batch).codes)
