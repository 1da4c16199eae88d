"""Tiny random-weight Qwen2.5-Omni thinker / Qwen2.5-VL models and their processors, built offline.

Used by the tests, the benchmarks and the `hooked-av demo` command: nothing is downloaded. The tokenizer is
Qwen2's byte-level tokenizer without merges (one token per byte) plus the family's special tokens, so chat
templates, placeholder expansion and special-token splitting behave as with the real checkpoints; only the
vocabulary is small. Image and video processors are HF's own (they need torchvision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

OMNI_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
                 "<|vision_bos|>", "<|vision_eos|>", "<|vision_pad|>", "<|IMAGE|>", "<|VIDEO|>")
VL_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")

# The official Qwen2.5-Omni chat template (the one shipped with the checkpoints and used in HF's tests).
OMNI_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio {{ audio_count.value }}: "
    "{% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The processors' named tokens (attributes such as processor.audio_token), as the chat templates write them.
OMNI_NAMED_TOKENS = {"image_token": "<|IMAGE|>", "audio_token": "<|AUDIO|>", "video_token": "<|VIDEO|>",
                     "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
                     "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}
VL_NAMED_TOKENS = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                   "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}

# Qwen2.5-VL's template, reduced to what differs from Omni's: its own vision markers.
VL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinySizes:
    """Decoder sizes of a tiny model; the encoders stay minimal. head_dim = hidden // heads."""

    hidden: int = 128
    intermediate: int = 256
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    mrope_section: tuple[int, int, int] = (4, 6, 6)  # sums to head_dim / 2

    @classmethod
    def scaled(cls, hidden: int, layers: int, heads: int = 8, kv_heads: int = 2,
               intermediate: int | None = None) -> TinySizes:
        """Bigger decoders for benchmarks, with Qwen's 1 : 1.5 : 1.5 split of the rotary frequencies."""
        half = hidden // heads // 2
        spatial = half * 3 // 8
        return cls(hidden=hidden, intermediate=intermediate or 3 * hidden, layers=layers, heads=heads,
                   kv_heads=kv_heads, mrope_section=(half - 2 * spatial, spatial, spatial))

    def __post_init__(self) -> None:
        head_dim = self.hidden // self.heads
        if sum(self.mrope_section) * 2 != head_dim:
            raise ValueError(f"mrope_section {self.mrope_section} must sum to head_dim/2 = {head_dim // 2}")


def byte_level_tokenizer(specials: tuple[str, ...], named: dict[str, str], not_special: frozenset[str] = frozenset()):
    """Qwen2 tokenizer over the 256 byte symbols plus `specials`, registered so they never split.

    Tokens in `not_special` stay atomic but are not special (kept by `skip_special_tokens`), as Qwen3's
    `<think>` or `<tool_call>`."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    for token in specials:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               unk_token="<|endoftext|>", extra_special_tokens=named)
    # Being in the vocabulary is not enough: unregistered, "<|im_start|>" splits into byte tokens.
    tokenizer.add_tokens([AddedToken(t, special=t not in not_special, normalized=False) for t in specials])
    return tokenizer


def tiny_omni_processor():
    from transformers import (Qwen2_5OmniProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor,
                              WhisperFeatureExtractor)

    tokenizer = byte_level_tokenizer(OMNI_SPECIALS, OMNI_NAMED_TOKENS)
    return Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(), video_processor=Qwen2VLVideoProcessor(),
        feature_extractor=WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, return_attention_mask=True),
        tokenizer=tokenizer, chat_template=OMNI_CHAT_TEMPLATE)


def tiny_vl_processor():
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tokenizer = byte_level_tokenizer(VL_SPECIALS, VL_NAMED_TOKENS)
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), video_processor=Qwen2VLVideoProcessor(),
                               tokenizer=tokenizer, chat_template=VL_CHAT_TEMPLATE)


def text_config(sizes: TinySizes, tokenizer, **overrides: Any) -> dict[str, Any]:
    """The Qwen2.5 text config of a small decoder of `sizes` over `tokenizer` (overrides: other fields)."""
    return dict(vocab_size=len(tokenizer), hidden_size=sizes.hidden, intermediate_size=sizes.intermediate,
                num_hidden_layers=sizes.layers, num_attention_heads=sizes.heads,
                num_key_value_heads=sizes.kv_heads, max_position_embeddings=32768, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                 "mrope_section": list(sizes.mrope_section)},
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.pad_token_id) | overrides


def vision_config(sizes: TinySizes) -> dict[str, Any]:
    """A two-block Qwen2.5 vision encoder whose merger writes `sizes.hidden`-wide tokens."""
    return dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, in_channels=3, patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=sizes.hidden,
                fullatt_block_indexes=[1])


def _finish(model, tokenizer, dtype: torch.dtype):
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(dtype).eval()


def tiny_omni_thinker(sizes: TinySizes = TinySizes(), seed: int = 0, dtype: torch.dtype = torch.float32,
                      attn_implementation: str = "sdpa"):
    """A random-weight `Qwen2_5OmniThinkerForConditionalGeneration` and its offline processor."""
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    processor = tiny_omni_processor()
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in OMNI_SPECIALS}
    config = Qwen2_5OmniThinkerConfig(
        audio_config=dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                          d_model=64, n_window=100, output_dim=sizes.hidden, max_source_positions=1500),
        vision_config=vision_config(sizes),
        text_config=text_config(sizes, tok),
        audio_token_index=ids["<|AUDIO|>"], image_token_index=ids["<|IMAGE|>"], video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"], audio_end_token_id=ids["<|audio_eos|>"],
        # Not declared config fields, but get_rope_index reads them.
        vision_start_token_id=ids["<|vision_bos|>"], vision_end_token_id=ids["<|vision_eos|>"],
        position_id_per_seconds=25, seconds_per_chunk=2)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config)
    return _finish(model, tok, dtype), processor


def tiny_qwen2_5_vl(sizes: TinySizes = TinySizes(), seed: int = 0, dtype: torch.dtype = torch.float32,
                    attn_implementation: str = "sdpa"):
    """A random-weight `Qwen2_5_VLForConditionalGeneration` and its offline processor."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    processor = tiny_vl_processor()
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in VL_SPECIALS}
    vision = vision_config(sizes) | {"tokens_per_second": 2}
    config = Qwen2_5_VLConfig(
        text_config=text_config(sizes, tok), vision_config=vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    return _finish(model, tok, dtype), processor


def synthetic_video(seconds: float = 4.0, fps: float = 2.0, height: int = 112, width: int = 112,
                    seed: int = 0) -> np.ndarray:
    """uint8 frames (T, H, W, 3) as if sampled at `fps`."""
    rng = np.random.default_rng(seed)
    return (rng.random((int(round(seconds * fps)), height, width, 3)) * 255).astype(np.uint8)


def synthetic_audio(seconds: float = 4.0, sr: int = 16000, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """A float32 sine with a little noise at `sr` Hz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def synthetic_image(height: int = 56, width: int = 84, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((height, width, 3)) * 255).astype(np.uint8)
