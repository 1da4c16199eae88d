"""A tiny random-weight Qwen3-Omni-MoE thinker and its processor, built offline (nothing is downloaded).

Kept from the real Qwen3-Omni-30B-A3B thinker, scaled down: a sparse MoE MLP in every layer (softmax router,
top-k, renormalised weights, no shared expert), per-head q/k RMSNorm, no attention bias, `head_dim` set
explicitly and != hidden / heads, interleaved mRoPE ([24, 20, 20] scaled to [6, 5, 5]), DeepStack (three vision
taps added after LLM layers 0-2), the Qwen3-VL vision tower (patch 16, merge 2), the AuT audio encoder (13 tokens
per second) and 13 position ids per second. The tokenizer holds the 256 byte symbols plus Qwen3-Omni's added
tokens in their real order, so tiny id = real id - 151387 for every added token.
"""

from __future__ import annotations

import torch

from hooked_av.testing.tiny import byte_level_tokenizer

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
            "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
            "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>",
            "</tool_response>", "<think>", "</think>", "<|audio_start|>", "<|audio_end|>", "<tts_pad>",
            "<tts_text_bos>", "<tts_text_eod>", "<tts_text_bos_single>", "<|audio_pad|>")
# Atomic but not special in the Qwen3 tokenizer (kept by skip_special_tokens).
NOT_SPECIAL = frozenset({"<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                         "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
                         "<think>", "</think>"})
# Named tokens Qwen3OmniMoeProcessor.__init__ reads from the tokenizer.
NAMED = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "audio_token": "<|audio_pad|>",
         "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>",
         "audio_bos_token": "<|audio_start|>", "audio_eos_token": "<|audio_end|>"}

# Qwen3-Omni's layout: no default system turn (unlike Qwen2.5-Omni), media placeholders in content order. The
# official template's tool and thinking branches are not reproduced.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content -%}"
    "{{- '<|audio_start|><|audio_pad|><|audio_end|>' -}}"
    "{%- elif content['type'] == 'video' or 'video' in content -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif content['type'] == 'text' -%}{{- content['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")


def tiny_qwen3_omni_processor():
    """Real Qwen3-Omni preprocessing: Whisper 128-bin log-mel, padded to the longest clip (no 30 s cap);
    Qwen2-VL image / video processors with patch 16, merge 2, temporal patch 2, mean = std = 0.5."""
    from transformers import (Qwen2VLImageProcessor, Qwen2VLVideoProcessor, Qwen3OmniMoeProcessor,
                              WhisperFeatureExtractor)

    tokenizer = byte_level_tokenizer(SPECIALS, NAMED, NOT_SPECIAL)
    vision = dict(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return Qwen3OmniMoeProcessor(
        image_processor=Qwen2VLImageProcessor(size={"shortest_edge": 3136, "longest_edge": 12845056}, **vision),
        video_processor=Qwen2VLVideoProcessor(**vision),
        feature_extractor=WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, n_fft=400,
                                                  chunk_length=300, return_attention_mask=True),
        tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def tiny_qwen3_omni_config(tokenizer, layers: int = 4, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                           head_dim: int = 32, experts: int = 8, top_k: int = 2, moe_intermediate: int = 32,
                           mrope_section: tuple[int, int, int] = (6, 5, 5)):
    """The thinker config. Several fields are traps of the HF config class and must be given explicitly."""
    from transformers import Qwen3OmniMoeThinkerConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    return Qwen3OmniMoeThinkerConfig(
        audio_config=dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                          d_model=64, downsample_hidden_size=32, output_dim=hidden, n_window=50,
                          n_window_infer=800, conv_chunksize=500, max_source_positions=1500),
        vision_config=dict(depth=4, hidden_size=64, intermediate_size=128, num_heads=4, in_channels=3,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=hidden,
                           num_position_embeddings=2304, deepstack_visual_indexes=[0, 1, 2],
                           hidden_act="gelu_pytorch_tanh"),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads,
                         head_dim=head_dim,  # not a declared field: without it head_dim = hidden / heads
                         intermediate_size=2 * hidden, moe_intermediate_size=moe_intermediate, num_experts=experts,
                         num_experts_per_tok=top_k, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                         max_position_embeddings=65536, rms_norm_eps=1e-6, attention_bias=False,
                         # HF neither validates nor requires mrope_section (a missing one means [24, 20, 20])
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                          "mrope_section": list(mrope_section), "interleaved": True},
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id),
        audio_token_id=ids["<|audio_pad|>"], image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], audio_start_token_id=ids["<|audio_start|>"],
        # Read by get_rope_index but not declared: an AttributeError on the first vision forward without them.
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        audio_end_token_id=ids["<|audio_end|>"],
        # The class default is 25; the checkpoint and the processor use 13.
        position_id_per_seconds=13, seconds_per_chunk=2, tie_word_embeddings=False)


def redraw_weights(model, seed: int, embed_std: float = 2.5, residual_out_gain: float = 0.7) -> None:
    """Fan-in scaled random weights (std 1 for embedding tables, `embed_std` for the token embedding, o_proj and
    the experts' down_proj times `residual_out_gain`). HF's std-0.02 init gives near-uniform logits and near-tied
    routers, so greedy decoding repeats one token and the top-k choice becomes a rounding lottery."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() < 2:
                continue
            if isinstance(model.get_submodule(name.rsplit(".", 1)[0]), torch.nn.Embedding):
                p.normal_(0.0, 1.0)
            else:  # Linear (out, in), fused experts (E, out, in), conv (out, in, *kernel)
                fan_in = p.shape[-1] if p.dim() == 3 and "experts" in name else p[0].numel()
                p.normal_(0.0, fan_in ** -0.5)
        lm = model.model.language_model
        lm.embed_tokens.weight.mul_(embed_std)
        for layer in lm.layers:
            layer.self_attn.o_proj.weight.mul_(residual_out_gain)
            down = layer.mlp.experts.down_proj if hasattr(layer.mlp, "experts") else layer.mlp.down_proj.weight
            down.mul_(residual_out_gain)


def tiny_qwen3_omni_thinker(seed: int = 0, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa",
                            **sizes):
    """A random-weight `Qwen3OmniMoeThinkerForConditionalGeneration` and its offline processor."""
    import copy

    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    processor = tiny_qwen3_omni_processor()
    tokenizer = processor.tokenizer
    # A private config: models built from one config object share it, so switching one's attention switches both.
    config = copy.deepcopy(tiny_qwen3_omni_config(tokenizer, **sizes))
    config._attn_implementation = attn_implementation
    model = Qwen3OmniMoeThinkerForConditionalGeneration(config)
    redraw_weights(model, seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(dtype).eval(), processor


def full_qwen3_omni(thinker):
    """A `Qwen3OmniMoeForConditionalGeneration` without talker (enable_audio_output=False) around `thinker`."""
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeForConditionalGeneration

    config = Qwen3OmniMoeConfig(thinker_config=thinker.config.to_dict(), enable_audio_output=False)
    with torch.device("meta"):  # the thinker built here is replaced at once
        full = Qwen3OmniMoeForConditionalGeneration(config)
    full.thinker = thinker
    return full.eval()
