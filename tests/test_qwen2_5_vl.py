"""Faithfulness of the hooked Qwen2.5-VL decoder against HF's `Qwen2_5_VLForConditionalGeneration` (fp32, tiny)."""

from __future__ import annotations

import pytest
import torch

from hooked_av import InputError, Modality
from hooked_av.model.adapter import text_positions

from .conftest import PROMPT

TOL = 1e-4
CASES = ("text", "image", "video", "padded_batch")


@pytest.fixture(scope="module")
def vl_batches(vl, media):
    model = vl[2]
    return {
        "text": model.prepare_inputs(PROMPT),
        "image": model.prepare_inputs(PROMPT, image=media["image"]),
        "video": model.prepare_inputs(PROMPT, video=media["video"]),
        "padded_batch": model.prepare_inputs([PROMPT, "What is in the clip?"],
                                             video=[media["video"], media["video2"]]),
    }


@pytest.fixture(scope="module")
def hf_outputs(vl, vl_batches):
    """HF forward (sdpa) with hidden states, computed once per case on first use."""
    hf_model = vl[0]
    memo = {}

    def get(case):
        if case not in memo:
            with torch.no_grad():
                memo[case] = hf_model(**vl_batches[case], output_hidden_states=True)
        return memo[case]
    return get


def max_diff_at_real_positions(ours, ref, attention_mask):
    keep = attention_mask.bool()
    return (ours[keep] - ref[keep]).abs().max().item()


def test_batches_hold_what_each_case_claims(vl, vl_batches):
    hf_model = vl[0]
    cfg = hf_model.config
    for case in CASES:
        assert "mm_token_type_ids" in vl_batches[case]  # HF needs it for 3-D positions
    assert not (vl_batches["text"]["input_ids"] == cfg.image_token_id).any()
    assert (vl_batches["image"]["input_ids"] == cfg.image_token_id).sum() == \
        vl_batches["image"]["image_grid_thw"].prod(-1).sum() // 4
    padded = vl_batches["padded_batch"]
    mask = padded["attention_mask"]
    # Left padded: every row ends with a real token, the shorter row starts with padding.
    assert mask[:, -1].all() and mask[1, 0] == 0 and mask[0].all()
    n_video = (padded["input_ids"] == cfg.video_token_id).sum(-1)
    assert n_video[0] > n_video[1] > 0  # two videos of different lengths
    assert (padded["video_grid_thw"].prod(-1) // 4).tolist() == n_video.tolist()


@pytest.mark.parametrize("case", CASES)
def test_logits_match_hf(vl, vl_batches, hf_outputs, case):
    _, _, model = vl
    batch = vl_batches[case]
    ours = model(batch)
    ref = hf_outputs(case).logits
    assert ours.shape == ref.shape
    assert max_diff_at_real_positions(ours, ref, batch["attention_mask"]) < TOL


@pytest.mark.parametrize("case", ["image", "video"])
def test_mrope_positions_matter(vl, vl_batches, hf_outputs, case):
    """The tolerance above is meaningful: 1-D positions instead of mRoPE would be far off HF."""
    _, _, model = vl
    batch = vl_batches[case]
    positions = model.adapter.position_ids(batch)
    assert positions.shape == (3, *batch["input_ids"].shape)
    assert not torch.equal(positions[1], positions[2])  # height and width axes differ over the vision grid
    flat = text_positions(batch["attention_mask"]).expand(3, -1, -1)
    wrong = model.run_with_hooks(batch, fwd_hooks=[("hook_pos_ids", lambda pos, hook: flat)])
    assert (wrong - hf_outputs(case).logits).abs().max() > 1e-3


@pytest.mark.parametrize("case", CASES)
def test_greedy_generation_matches_hf(vl, vl_batches, case):
    hf_model, _, model = vl
    batch = vl_batches[case]
    out = model.generate(batch, max_new_tokens=16)
    ref = hf_model.generate(**batch, max_new_tokens=16, do_sample=False, eos_token_id=model.adapter.stop_token_ids())
    n = min(out.sequences.shape[1], ref.shape[1])
    assert torch.equal(out.sequences[:, :n], ref[:, :n])
    assert out.sequences.shape == ref.shape  # same tokens, so both stop at the same step
    prompt_len = batch["input_ids"].shape[1]
    assert out.prompt_length == prompt_len
    assert torch.equal(out.sequences[:, :prompt_len], batch["input_ids"])
    assert torch.equal(out.new_tokens, out.sequences[:, prompt_len:])
    assert out.new_tokens.shape[1] >= 1


@pytest.mark.parametrize("case", ["image", "padded_batch"])
def test_resid_post_equals_hf_hidden_states(vl, vl_batches, hf_outputs, case):
    _, _, model = vl
    batch = vl_batches[case]
    logits, cache = model.run_with_cache(batch)
    hidden = hf_outputs(case).hidden_states
    n = model.cfg.n_layers
    assert len(hidden) == n + 1
    keep = batch["attention_mask"].bool()
    assert (cache["hook_inputs_embeds"] - hidden[0])[keep].abs().max() < TOL
    for layer in range(n - 1):
        assert (cache[f"blocks.{layer}.hook_resid_post"] - hidden[layer + 1])[keep].abs().max() < TOL
    # HF reports the last hidden state after the final norm.
    final = model.ln_final(cache[f"blocks.{n - 1}.hook_resid_post"])
    assert (final - hidden[n])[keep].abs().max() < TOL
    assert (model.unembed(final) - logits).abs().max() < 1e-5


def test_pattern_equals_hf_eager_attentions(vl, vl_batches):
    hf_model, _, model = vl
    batch = vl_batches["padded_batch"]
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_pattern"))
    assert all(block.attn.last_path == "eager" for block in model.blocks)
    hf_model.set_attn_implementation("eager")
    try:
        attentions = hf_model(**batch, output_attentions=True).attentions
    finally:
        hf_model.set_attn_implementation("sdpa")
    assert hf_model.config._attn_implementation == "sdpa"
    assert attentions is not None and len(attentions) == model.cfg.n_layers
    keep = batch["attention_mask"].bool()
    for layer, ref in enumerate(attentions):
        ours = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert ours.shape == ref.shape == (2, model.cfg.n_heads, keep.shape[1], keep.shape[1])
        diff = (ours - ref).abs().amax(dim=(1, 3))  # per (batch, query)
        assert diff[keep].max() < TOL
        # Real query rows sum to one and give padded keys no attention.
        real_rows = ours[1][:, keep[1]]
        assert torch.allclose(real_rows.sum(-1), torch.ones(()), atol=1e-5)
        assert real_rows[..., ~keep[1]].abs().max() == 0


def test_audio_is_rejected(vl, media):
    _, _, model = vl
    with pytest.raises(InputError, match="audio"):
        model.prepare_inputs(PROMPT, audio=media["audio"])
    with pytest.raises(InputError, match="audio"):
        model.prepare_inputs(PROMPT, video=media["video"], use_audio_in_video=True)


@pytest.mark.parametrize("case", ["video", "padded_batch"])
def test_modality_map_marks_exactly_the_video_pads(vl, vl_batches, case):
    hf_model, processor, model = vl
    batch = vl_batches[case]
    video_pad = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert video_pad == hf_model.config.video_token_id
    mm = model.modality_map(batch)
    ids = batch["input_ids"]
    assert mm.codes.shape == ids.shape
    assert torch.equal(mm.mask("video"), ids == video_pad)
    assert int(mm.mask("video").sum()) == int(batch["video_grid_thw"].prod(-1).sum()) // 4
    assert not mm.mask("image", "audio").any()
    assert torch.equal(mm.mask("pad"), batch["attention_mask"] == 0)
    # The markers around the video are special tokens, the user's prompt is text.
    start = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    end = processor.tokenizer.convert_tokens_to_ids("<|vision_end|>")
    assert (mm.codes[(ids == start) | (ids == end)] == Modality.SPECIAL).all()
    assert mm.mask("text").any()
