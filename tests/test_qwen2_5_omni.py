"""Faithfulness of the hooked Qwen2.5-Omni thinker against HF's own implementation (fp32, tiny random weights)."""

from __future__ import annotations

import pytest
import torch

from hooked_av import Modality

from .conftest import OMNI_CASES

TOL = 1e-4


def max_diff_at_real_positions(ours, ref, attention_mask):
    keep = attention_mask.bool()
    return (ours[keep] - ref[keep]).abs().max().item()


@pytest.mark.parametrize("case", [*OMNI_CASES, "padded_batch"])
def test_logits_match_hf(omni, omni_batches, case):
    hf_model, _, model = omni
    batch = omni_batches[case]
    ours = model(batch)
    ref = hf_model(**batch).logits
    assert ours.shape == ref.shape
    assert max_diff_at_real_positions(ours, ref, batch["attention_mask"]) < TOL


def test_model_accepts_kwargs_and_tensor(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["text"]
    assert torch.equal(model(**batch), model(batch))
    assert torch.equal(model(batch["input_ids"]), model(batch))
    assert model(batch, return_type=None) is None


def test_loss_is_next_token_cross_entropy_on_text(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["audio+video"]
    logits = model(batch)
    mm = model.modality_map(batch)
    targets = batch["input_ids"][0, 1:]
    keep = ~mm.mask("audio", "video", "image", "pad")[0, 1:]
    expected = torch.nn.functional.cross_entropy(logits[0, :-1][keep], targets[keep])
    assert torch.allclose(model(batch, return_type="loss"), expected, atol=1e-6)


@pytest.mark.parametrize("case", ["audio+video", "use_audio_in_video", "padded_batch"])
def test_greedy_generation_matches_hf(omni, omni_batches, case):
    hf_model, _, model = omni
    batch = omni_batches[case]
    out = model.generate(batch, max_new_tokens=16)
    ref = hf_model.generate(**batch, max_new_tokens=16, do_sample=False, eos_token_id=model.adapter.stop_token_ids())
    assert out.sequences.shape == ref.shape
    assert torch.equal(out.sequences, ref)
    assert out.new_tokens.shape[1] == ref.shape[1] - batch["input_ids"].shape[1]
    assert out.modality_map.codes.shape == out.sequences.shape
    assert (out.modality_map.codes[:, out.prompt_length:] != Modality.GENERATED).sum() == \
        (out.new_tokens[:, :] == model.adapter.pad_token_id()).sum()


def test_resid_post_equals_hf_hidden_states(omni, omni_batches):
    hf_model, _, model = omni
    batch = omni_batches["use_audio_in_video"]
    _, cache = model.run_with_cache(batch)
    hidden = hf_model(**batch, output_hidden_states=True).hidden_states
    n = model.cfg.n_layers
    assert torch.allclose(cache["hook_inputs_embeds"], hidden[0], atol=TOL)
    for layer in range(n - 1):
        assert torch.allclose(cache[f"blocks.{layer}.hook_resid_post"], hidden[layer + 1], atol=TOL)
        assert torch.equal(cache[f"blocks.{layer}.hook_resid_post"], cache[f"blocks.{layer + 1}.hook_resid_pre"])
    # HF's last hidden state is after the final norm.
    assert torch.allclose(model.ln_final(cache[f"blocks.{n - 1}.hook_resid_post"]), hidden[n], atol=TOL)


def test_pattern_equals_hf_eager_attentions(omni, omni_batches):
    hf_model, _, model = omni
    batch = omni_batches["padded_batch"]
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_pattern"))
    hf_model.set_attn_implementation("eager")
    try:
        attentions = hf_model(**batch, output_attentions=True).attentions
    finally:
        hf_model.set_attn_implementation("sdpa")
    assert len(attentions) == model.cfg.n_layers
    keep = batch["attention_mask"].bool()
    for layer, ref in enumerate(attentions):
        ours = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert ours.shape == ref.shape  # [batch, head, query, key]
        diff = (ours - ref).abs().amax(dim=(1, 3))  # per (batch, query)
        assert diff[keep].max() < TOL


def test_encoder_hooks_see_every_modality_token(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["use_audio_in_video"]
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("_embeds"))
    mm = cache.modality_map
    ids = batch["input_ids"]
    assert cache["hook_video_embeds"].shape == (int(mm.mask("video").sum()), model.cfg.d_model)
    assert cache["hook_audio_embeds"].shape == (int(mm.mask("audio").sum()), model.cfg.d_model)
    merged = cache["hook_inputs_embeds"]
    assert torch.equal(merged[mm.mask("audio")], cache["hook_audio_embeds"])
    assert torch.equal(merged[mm.mask("video")], cache["hook_video_embeds"])
    text = mm.mask("text")
    assert torch.equal(merged[text], model.embed(ids)[text])


def test_zeroing_audio_embeds_changes_only_what_follows_audio(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["audio+video"]
    clean = model(batch)
    ablated = model.run_with_hooks(batch, fwd_hooks=[("hook_audio_embeds", lambda x, hook: torch.zeros_like(x))])
    first_audio = int(model.modality_map(batch).positions("audio")[0])
    assert torch.equal(clean[:, :first_audio], ablated[:, :first_audio])
    assert (clean[:, first_audio:] - ablated[:, first_audio:]).abs().max() > 1e-3
