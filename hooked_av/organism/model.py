"""The organism (the real HF Qwen2.5-Omni thinker class) and its twin (the real Qwen2.5-VL class), at tiny sizes.

Sizes follow the prototype: a 6-layer decoder (hidden 128, MLP 256, 4 heads / 2 KV heads), 2-layer audio and
vision encoders. The twin has the same decoder and vision encoder sizes and shares the organism's word ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from hooked_av.organism.vocab import omni_processor, vl_processor
from hooked_av.testing.tiny import text_config, vision_config


@dataclass(frozen=True)
class OrganismSizes:
    layers: int = 6
    hidden: int = 128
    intermediate: int = 256
    heads: int = 4
    kv_heads: int = 2
    mrope_section: tuple[int, int, int] = (4, 6, 6)  # sums to head_dim / 2 = 16


def organism_text_config(sizes: OrganismSizes, tokenizer) -> dict[str, Any]:
    return text_config(sizes, tokenizer, max_position_embeddings=4096, tie_word_embeddings=False)


def finish(model, tokenizer):
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_organism(seed: int, sizes: OrganismSizes = OrganismSizes()):
    """A freshly initialised `Qwen2_5OmniThinkerForConditionalGeneration` and its processor."""
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    processor = omni_processor()
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids
    config = Qwen2_5OmniThinkerConfig(
        audio_config=dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                          d_model=64, n_window=100, output_dim=sizes.hidden, max_source_positions=1500),
        vision_config=vision_config(sizes), text_config=organism_text_config(sizes, tok),
        audio_token_index=ids("<|AUDIO|>"), image_token_index=ids("<|IMAGE|>"), video_token_index=ids("<|VIDEO|>"),
        audio_start_token_id=ids("<|audio_bos|>"), audio_end_token_id=ids("<|audio_eos|>"),
        # Not declared config fields, but get_rope_index reads them.
        vision_start_token_id=ids("<|vision_bos|>"), vision_end_token_id=ids("<|vision_eos|>"),
        position_id_per_seconds=25, seconds_per_chunk=2)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return finish(Qwen2_5OmniThinkerForConditionalGeneration(config), tok), processor


def build_twin(seed: int, sizes: OrganismSizes = OrganismSizes()):
    """A freshly initialised `Qwen2_5_VLForConditionalGeneration` (the vision-only base model) and its processor."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    processor = vl_processor()
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=organism_text_config(sizes, tok), vision_config=vision_config(sizes) | {"tokens_per_second": 2},
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return finish(Qwen2_5_VLForConditionalGeneration(config), tok), processor
