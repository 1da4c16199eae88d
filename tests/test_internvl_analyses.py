"""The paper's analyses run unchanged on InternOmni (the official fixture's checkpoint, the paper's setting: video
frames + audio + "Describe what you see and hear."), and the token shift against its base InternVL 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooked_av import HookedAVModel
from hooked_av.analysis.attention import attention_by_modality
from hooked_av.analysis.logit_lens import logit_lens
from hooked_av.analysis.token_shift import token_shift

from .analysis_checks import assert_knockout_makes_the_output_independent, assert_shares_match_a_full_forward
from .test_internvl import BASE_CHECKPOINT, CHECKPOINT, media_of, official_tensors, prompts_of

GROUPS = {"video": ("video",), "audio": ("audio",), "text": ("text",)}
PROMPT = "Describe what you see and hear."


@pytest.fixture(scope="module")
def model():
    return HookedAVModel.from_pretrained(CHECKPOINT)


@pytest.fixture(scope="module")
def base():
    return HookedAVModel.from_pretrained(BASE_CHECKPOINT)


def av_batch(model, perturb: str | None = None):
    """The fixture's video + audio case; `perturb` replaces its audio (silence of the same length) or its frames
    (inverted)."""
    media = media_of("video_audio")
    if perturb == "audio":
        media["audio"] = np.zeros_like(media["audio"])
    if perturb == "video":
        media["video"] = 255 - media["video"]
    return model.prepare_inputs(PROMPT, **media)


def test_attention_by_modality(model):
    batch = av_batch(model)
    result = attention_by_modality(model, batch, max_new_tokens=5, groups=GROUPS, stop_token_ids=[])
    assert result.group_sizes[0]["video"] == 3 * model.processor.tokens_per_tile
    assert result.group_sizes[0]["audio"] == 30
    assert_shares_match_a_full_forward(model, batch, result, GROUPS)


def test_logit_lens_at_audio_positions(model):
    batch = av_batch(model)
    result = logit_lens(model, batch, positions="audio", top_k=3)
    audio = model.modality_map(batch).positions("audio")
    assert audio.numel() == 30 and torch.equal(result.positions, audio.cpu())
    # the last layer's lens is the official model's own next-token distribution at those positions
    official = official_tensors("video_audio")["logits"][0, audio].softmax(-1).topk(3, dim=-1)
    assert torch.equal(result.top_ids[-1], official.indices)
    assert torch.allclose(result.top_probs[-1], official.values, atol=1e-4)
    assert len(result.tokens) == model.cfg.n_layers and len(result.tokens[0]) == 30


@pytest.mark.parametrize("source", ["audio", "video"])
def test_knockout_makes_the_output_independent_of_the_blocked_modality(model, source):
    batches = [av_batch(model), av_batch(model, perturb=source)]
    assert_knockout_makes_the_output_independent(model, batches, source)


def test_token_shift_against_the_base_model(model, base):
    """InternOmni (frames + audio) against InternVL 2 (the same frames): the response is the official greedy one,
    and the first token's KL and base rank are those of the official logits of both models."""
    media = media_of("video_audio")
    result = token_shift(model, base, video=media["video"], audio=media["audio"], instruction=prompts_of("video_audio"),
                         max_new_tokens=12)
    official = official_tensors("video_audio")
    assert result.response_ids.tolist() == official["generated_ids"][0].tolist()
    av = official["logits"][0, -1].log_softmax(-1)
    base_logp = official_tensors("base_video")["logits"][0, -1].log_softmax(-1)
    first = int(official["generated_ids"][0, 0])
    assert abs(float(result.kl_av_base[0]) - float((av.exp() * (av - base_logp)).sum())) < 1e-4
    assert int(result.base_rank[0]) == int((base_logp > base_logp[first]).sum()) + 1
    assert float(result.kl_av_base.mean()) > 0.01  # the audio shifts the distribution
    # Without audio the two models are the same network (identical non-audio weights): no shift at all.
    same = token_shift(model, base, video=media["video"], instruction=prompts_of("video_audio"), max_new_tokens=12)
    assert same.response_ids.tolist() == official_tensors("video")["generated_ids"][0].tolist()
    assert float(same.kl_av_base.abs().max()) < 1e-5 and set(same.buckets) == {"unshifted"}
    assert same.summary()["unshifted"] == pytest.approx(1.0)
