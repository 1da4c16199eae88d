"""Shared fixtures: tiny random-weight models built offline, in fp32, and processor batches for each case."""

from __future__ import annotations

import pytest
import torch

from hooked_av import HookedAVModel
from hooked_av.testing.tiny import (synthetic_audio, synthetic_image, synthetic_video, tiny_omni_thinker,
                                    tiny_qwen2_5_vl)

PROMPT = "Describe what you see and hear."


@pytest.fixture(scope="session")
def omni():
    """(hf_model, processor, hooked model) sharing weights; HF runs with sdpa."""
    hf_model, processor = tiny_omni_thinker()
    return hf_model, processor, HookedAVModel.from_hf_model(hf_model, processor)


@pytest.fixture(scope="session")
def vl():
    hf_model, processor = tiny_qwen2_5_vl(seed=1)
    return hf_model, processor, HookedAVModel.from_hf_model(hf_model, processor)


@pytest.fixture(scope="session")
def media():
    return {"video": synthetic_video(seconds=4.0), "audio": synthetic_audio(seconds=4.0),
            "image": synthetic_image(), "video2": synthetic_video(seconds=2.0, seed=1),
            "audio2": synthetic_audio(seconds=2.0, freq=880.0, seed=1)}


OMNI_CASES = {
    "text": dict(),
    "image": dict(image="image"),
    "video": dict(video="video"),
    "audio": dict(audio="audio"),
    "audio+video": dict(video="video", audio="audio"),
    "use_audio_in_video": dict(video="video", audio="audio", use_audio_in_video=True),
}


def case_batch(model: HookedAVModel, media: dict, case: dict) -> dict:
    kwargs = {k: (media[v] if isinstance(v, str) else v) for k, v in case.items()}
    return model.prepare_inputs(PROMPT, **kwargs)


@pytest.fixture(scope="session")
def omni_batches(omni, media):
    model = omni[2]
    batches = {name: case_batch(model, media, case) for name, case in OMNI_CASES.items()}
    batches["padded_batch"] = model.prepare_inputs([PROMPT, "What do you hear?"], video=[media["video"], media["video2"]],
                                                   audio=[media["audio"], media["audio2"]])
    return batches


@pytest.fixture(autouse=True)
def _no_grad_and_clean_hooks(omni):
    with torch.no_grad():
        yield
    omni[2].reset_hooks(including_permanent=True)


# ---- Qwen3-Omni-MoE ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def q3omni():
    """(hf_model, processor, hooked model) of the tiny Qwen3-Omni-MoE thinker, sharing weights; HF runs sdpa."""
    from hooked_av.testing.tiny_qwen3_omni import tiny_qwen3_omni_thinker

    hf_model, processor = tiny_qwen3_omni_thinker()
    return hf_model, processor, HookedAVModel.from_hf_model(hf_model, processor)


@pytest.fixture(scope="session")
def q3_media():
    """Short clips keep the tiny Qwen3 tests fast: 2 s of 2 fps video (one 1 s grid = 13 positions apart)."""
    return {"video": synthetic_video(seconds=2.0), "audio": synthetic_audio(seconds=2.0), "image": synthetic_image(),
            "video2": synthetic_video(seconds=1.0, seed=1), "audio2": synthetic_audio(seconds=1.0, freq=880.0, seed=1)}


@pytest.fixture(scope="session")
def q3_batches(q3omni, q3_media):
    model = q3omni[2]
    batches = {name: case_batch(model, q3_media, case) for name, case in OMNI_CASES.items()}
    batches["padded_batch"] = model.prepare_inputs([PROMPT, "What do you hear?"],
                                                   video=[q3_media["video"], q3_media["video2"]],
                                                   audio=[q3_media["audio"], q3_media["audio2"]])
    return batches
