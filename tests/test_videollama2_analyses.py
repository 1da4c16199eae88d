"""The paper's analyses run unchanged on VideoLLaMA2.1-AV (the official fixture's checkpoint, the paper's
audio-visual layout: video tokens then audio tokens)."""

from __future__ import annotations

import pytest
import torch

from hooked_av import HookedAVModel
from hooked_av.analysis.attention import attention_by_modality
from hooked_av.analysis.knockout import generate_knockouts
from hooked_av.analysis.logit_lens import logit_lens

from .analysis_checks import (assert_knockout_makes_the_output_independent,
                              assert_last_lens_layer_is_the_models_output,
                              assert_shares_match_a_full_forward)
from .test_videollama2 import CHECKPOINT, raw_inputs

GROUPS = {"video": ("video",), "audio": ("audio",), "text": ("text",)}


@pytest.fixture(scope="module")
def model():
    return HookedAVModel.from_pretrained(CHECKPOINT, dtype=torch.float32)


def av_batch(model, perturb: str | None = None):
    """The fixture's audio-visual clip; `perturb` replaces its audio (reversed, louder) or frames (inverted)."""
    question, frames, wave = raw_inputs("av")
    if perturb == "audio":
        wave = wave[::-1].copy() * 3
    if perturb == "video":
        frames = [255 - f for f in frames]
    return model.prepare_inputs(question, video=frames, audio=wave)


def test_attention_by_modality(model):
    batch = av_batch(model)
    result = attention_by_modality(model, batch, max_new_tokens=5, groups=GROUPS, stop_token_ids=[])
    assert result.group_sizes[0]["video"] == model.processor.video_tokens
    assert result.group_sizes[0]["audio"] == model.processor.audio_tokens
    assert_shares_match_a_full_forward(model, batch, result, GROUPS)


def test_logit_lens_at_audio_positions(model):
    batch = av_batch(model)
    result = logit_lens(model, batch, positions="audio", top_k=3)
    audio = model.modality_map(batch).positions("audio")
    assert audio.numel() == model.processor.audio_tokens and torch.equal(result.positions, audio.cpu())
    assert_last_lens_layer_is_the_models_output(model, batch, result, audio)
    assert len(result.tokens) == model.cfg.n_layers and len(result.tokens[0]) == audio.numel()


@pytest.mark.parametrize("source", ["audio", "video"])
def test_knockout_makes_the_output_independent_of_the_blocked_modality(model, source):
    batches = [av_batch(model), av_batch(model, perturb=source)]
    clean, knocked, knockout = assert_knockout_makes_the_output_independent(model, batches, source)
    # the shared-prefix sweep decodes with the same (family default) repetition penalty as generate
    swept = generate_knockouts(model, batches[0], [None, knockout], max_new_tokens=8, stop_token_ids=[])
    assert torch.equal(swept[0], clean[0][0]) and torch.equal(swept[1], knocked[0][0])
