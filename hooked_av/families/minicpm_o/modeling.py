"""MiniCPM-o 2.6 as one torch module with the official parameter names (`llm.`, `vpm.`, `resampler.`, `apm.`,
`audio_projection_layer.`), built from transformers' in-tree modules plus the pieces that differ.

transformers has no MiniCPM-o; the checkpoint's own code is never executed. The TTS part (`tts.*`) is not built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Idefics2VisionConfig, Qwen2Config, Qwen2ForCausalLM, WhisperConfig
from transformers.models.idefics2.modeling_idefics2 import Idefics2VisionTransformer

from hooked_av.families.composite_config import CompositeConfig
from hooked_av.families.minicpm_o.navit import NaViTEmbeddings
from hooked_av.families.minicpm_o.resampler import Resampler
from hooked_av.families.minicpm_o.whisper import AudioProjector, ChunkedWhisperEncoder
from hooked_av.model.errors import UnsupportedCheckpointError

# config.json keys that are not the Qwen2 LLM's own (sub-configs and MiniCPM-o fields read below)
_SUB_CONFIGS = ("vision_config", "audio_config", "tts_config", "slice_config")
_METADATA = ("auto_map", "architectures", "model_type", "transformers_version", "_name_or_path")


def _sub_config(config: dict[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key)
    if not isinstance(value, dict):
        raise UnsupportedCheckpointError(f"a MiniCPM-o config.json needs a '{key}' mapping, got {value!r}")
    return {k: v for k, v in value.items() if k not in _METADATA}


class MiniCPMOConfig(CompositeConfig):
    """The official config.json: Qwen2 LLM fields at the top level, SigLIP and Whisper sub-configs."""

    def __init__(self, **config: Any):
        self.text_config = Qwen2Config(**{k: v for k, v in config.items() if k not in _SUB_CONFIGS + _METADATA})
        vision = _sub_config(config, "vision_config")
        if config.get("drop_vision_last_layer", True):  # the official class default drops it
            vision["num_hidden_layers"] = vision.get("num_hidden_layers", 27) - 1
        self.vision_config = Idefics2VisionConfig(**vision)
        self.audio_config = WhisperConfig(**_sub_config(config, "audio_config"))
        self.query_num: int = config.get("query_num", 64)
        self.vision_batch_size: int = config.get("vision_batch_size", 16)
        self.audio_pool_step: int = config.get("audio_pool_step", 2)
        self.audio_chunk_length: float = config.get("audio_chunk_length", 1.0)
        self.chunk_input: bool = config.get("chunk_input", True)
        self.tie_word_embeddings: bool = self.text_config.tie_word_embeddings


class MiniCPMO(nn.Module):
    def __init__(self, config: MiniCPMOConfig):
        super().__init__()
        self.config = config
        self.llm = Qwen2ForCausalLM(config.text_config)
        self.vpm = Idefics2VisionTransformer(config.vision_config)
        self.vpm.embeddings = NaViTEmbeddings(config.vision_config)
        hidden = config.text_config.hidden_size
        self.resampler = Resampler(config.query_num, hidden, config.vision_config.hidden_size)
        self.apm = ChunkedWhisperEncoder(config.audio_config)
        # the official code takes the projector's input width from encoder_ffn_dim // 4, not d_model
        self.audio_projection_layer = AudioProjector(config.audio_config.encoder_ffn_dim // 4, hidden)

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.dtype
