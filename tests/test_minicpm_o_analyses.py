"""The paper's analyses run unchanged on MiniCPM-o 2.6 (the official fixture's checkpoint, omni layout)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from hooked_av import HookedAVModel
from hooked_av.analysis.attention import attention_by_modality
from hooked_av.analysis.logit_lens import logit_lens

from .analysis_checks import (assert_knockout_makes_the_output_independent,
                              assert_last_lens_layer_is_the_models_output,
                              assert_shares_match_a_full_forward)
from .test_minicpm_o import CHECKPOINT, official_messages

GROUPS = {"video": ("video",), "audio": ("audio",), "text": ("text",)}


@pytest.fixture(scope="module")
def model():
    return HookedAVModel.from_pretrained(CHECKPOINT)


def omni_batch(model, perturb: str | None = None):
    """The fixture's omni conversation; `perturb` replaces its audio (reversed, louder) or its frames (inverted)."""
    msgs, options = official_messages("omni")
    content = msgs[1]["content"]
    for i, item in enumerate(content):
        if perturb == "audio" and isinstance(item, np.ndarray):
            content[i] = item[::-1].copy() * 3
        if perturb == "video" and isinstance(item, Image.Image):
            content[i] = ImageOps.invert(item)
    return model.prepare_inputs(messages=msgs, **options)


def test_attention_by_modality(model):
    batch = omni_batch(model)
    result = attention_by_modality(model, batch, max_new_tokens=5, groups=GROUPS, stop_token_ids=[])
    assert result.group_sizes[0]["video"] == 3 * model.processor.query_num and result.group_sizes[0]["audio"] == 75
    assert_shares_match_a_full_forward(model, batch, result, GROUPS)


def test_logit_lens_at_audio_positions(model):
    batch = omni_batch(model)
    result = logit_lens(model, batch, positions="audio", top_k=3)
    audio = model.modality_map(batch).positions("audio")
    assert audio.numel() == 75 and torch.equal(result.positions, audio.cpu())
    assert_last_lens_layer_is_the_models_output(model, batch, result, audio)
    assert len(result.tokens) == model.cfg.n_layers and len(result.tokens[0]) == 75


@pytest.mark.parametrize("source", ["audio", "video"])
def test_knockout_makes_the_output_independent_of_the_blocked_modality(model, source):
    batches = [omni_batch(model), omni_batch(model, perturb=source)]
    assert_knockout_makes_the_output_independent(model, batches, source)
