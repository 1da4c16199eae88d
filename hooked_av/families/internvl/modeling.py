"""InternVL 2 and InternOmni as torch modules with the official top-level names (`vision_model.`, `mlp1.`,
`language_model.`, and for InternOmni `audio_model.`, `mlp2.`), built from transformers' in-tree modules.

transformers has neither model (its `internvl` is the later "-hf" layout); the checkpoints' own code is never run.
InternLM2 computes what transformers' Llama computes (below 32768 positions, see docs): the LLM is a
`LlamaForCausalLM`, InternViT is transformers' `InternVLVisionModel`, the audio encoder transformers' Whisper
modules with the official forward (`whisper.py`). The family YAMLs rename the official tensor names to these
modules; `convert_checkpoint` unpacks the fused q/k/v tensors (`packed_qkv.py`).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformers import InternVLVisionConfig, InternVLVisionModel, LlamaConfig, LlamaForCausalLM, WhisperConfig

from hooked_av.families.composite_config import CompositeConfig
from hooked_av.families.internvl.packed_qkv import split_thirds, split_wqkv
from hooked_av.families.internvl.pixel_shuffle import pixel_shuffle
from hooked_av.families.internvl.whisper import AudioModel
from hooked_av.model.errors import UnsupportedCheckpointError

_METADATA = ("auto_map", "architectures", "model_type", "transformers_version", "_name_or_path", "torch_dtype")


def _sub_config(config: dict[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key)
    if not isinstance(value, dict):
        raise UnsupportedCheckpointError(f"an InternVL config.json needs a '{key}' mapping, got {value!r}")
    return {k: v for k, v in value.items() if k not in _METADATA}


def llm_config(llm: dict[str, Any]) -> LlamaConfig:
    """InternLM2's config as the Llama config that computes the same (bias-free, rotate-half RoPE)."""
    scaling = dict(llm.get("rope_scaling") or {})
    rope = {"rope_type": scaling.get("type", scaling.get("rope_type", "default")), "rope_theta": llm["rope_theta"]}
    if "factor" in scaling:
        rope["factor"] = scaling["factor"]
    return LlamaConfig(
        vocab_size=llm["vocab_size"], hidden_size=llm["hidden_size"], intermediate_size=llm["intermediate_size"],
        num_hidden_layers=llm["num_hidden_layers"], num_attention_heads=llm["num_attention_heads"],
        num_key_value_heads=llm.get("num_key_value_heads", llm["num_attention_heads"]),
        hidden_act=llm.get("hidden_act", "silu"), max_position_embeddings=llm["max_position_embeddings"],
        rms_norm_eps=llm["rms_norm_eps"], rope_parameters=rope, attention_bias=llm.get("bias", False),
        tie_word_embeddings=llm.get("tie_word_embeddings", False), bos_token_id=llm.get("bos_token_id", 1),
        eos_token_id=llm.get("eos_token_id", 2), pad_token_id=llm.get("pad_token_id", 2))


def vision_config(vision: dict[str, Any]) -> InternVLVisionConfig:
    return InternVLVisionConfig(
        hidden_size=vision["hidden_size"], intermediate_size=vision["intermediate_size"],
        num_hidden_layers=vision["num_hidden_layers"], num_attention_heads=vision["num_attention_heads"],
        image_size=vision["image_size"], patch_size=vision["patch_size"], num_channels=vision.get("num_channels", 3),
        attention_bias=vision.get("qkv_bias", True), use_qk_norm=vision.get("qk_normalization", False),
        norm_type=vision.get("norm_type", "layer_norm"), layer_norm_eps=vision.get("layer_norm_eps", 1e-6),
        hidden_act=vision.get("hidden_act", "gelu"), use_mean_pooling=True)  # InternViT has no final norm


class InternVLChatConfig(CompositeConfig):
    """The official config.json (`model_type` "internvl_chat"): `llm_config`, `vision_config` and the VLM fields."""

    def __init__(self, **config: Any):
        llm = _sub_config(config, "llm_config")
        if "InternLM2ForCausalLM" not in (config["llm_config"].get("architectures") or ["InternLM2ForCausalLM"]):
            raise UnsupportedCheckpointError(
                f"the LLM of this InternVL checkpoint is {config['llm_config']['architectures']}; only InternLM2 "
                "(InternVL 2-2B/8B/26B, InternOmni) is supported")
        self.text_config = llm_config(llm)
        self.vision_config = vision_config(_sub_config(config, "vision_config"))
        self.downsample_ratio: float = config.get("downsample_ratio", 0.5)
        self.ps_version: str = config.get("ps_version", "v1")  # the official class default
        self.select_layer: int = config.get("select_layer", -1)
        self.image_size: int = config.get("force_image_size") or self.vision_config.image_size[0]
        self.template: str = config.get("template", "internlm2-chat")
        self.dynamic_image_size: bool = config.get("dynamic_image_size", False)
        self.min_dynamic_patch: int = config.get("min_dynamic_patch", 1)
        self.max_dynamic_patch: int = config.get("max_dynamic_patch", 6)
        self.use_thumbnail: bool = config.get("use_thumbnail", False)
        self.tie_word_embeddings: bool = self.text_config.tie_word_embeddings
        self.audio_config: WhisperConfig | None = None

    @property
    def num_image_token(self) -> int:
        """LLM tokens per tile: (image_size / patch_size)^2 * downsample_ratio^2 (256 for 448 px, patch 14)."""
        return int((self.image_size // self.vision_config.patch_size[0]) ** 2 * self.downsample_ratio ** 2)


class InternOmniConfig(InternVLChatConfig):
    """InternVL 2's config plus `audio_config` (the Whisper encoder)."""

    def __init__(self, **config: Any):
        super().__init__(**config)
        self.audio_config = WhisperConfig(**_sub_config(config, "audio_config"))


def projector(d_in: int, d_out: int) -> nn.Sequential:
    """`mlp1` / `mlp2`: LayerNorm, Linear, GELU, Linear (official indices 0, 1, 3)."""
    return nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))


class InternVLChatModel(nn.Module):
    """InternVL 2: InternViT + pixel shuffle + `mlp1`, and the InternLM2 LLM (as transformers' Llama)."""

    def __init__(self, config: InternVLChatConfig):
        super().__init__()
        self.config = config
        hidden = config.text_config.hidden_size
        self.vision_model = InternVLVisionModel(config.vision_config)
        shuffled = config.vision_config.hidden_size * int(1 / config.downsample_ratio) ** 2
        self.mlp1 = projector(shuffled, hidden)
        self.language_model = LlamaForCausalLM(config.text_config)

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.dtype

    def extract_feature(self, pixel_values: Float[Tensor, "tiles 3 size size"]
                        ) -> Float[Tensor, "tiles tokens d_model"]:
        """The official `extract_feature`: ViT up to `select_layer`, CLS dropped, pixel shuffle, `mlp1`."""
        vit = self.vision_model
        n_layers = len(vit.encoder.layer)
        used = n_layers + 1 + self.config.select_layer if self.config.select_layer < 0 else self.config.select_layer
        x = vit.embeddings(pixel_values.to(self.dtype))
        for layer in vit.encoder.layer[:used]:
            x = layer(x)
        x = x[:, 1:]
        side = int(x.shape[1] ** 0.5)
        x = pixel_shuffle(x.reshape(x.shape[0], side, side, -1), self.config.downsample_ratio, self.config.ps_version)
        return self.mlp1(x.reshape(x.shape[0], -1, x.shape[-1]))

    def convert_checkpoint(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Unpack the fused tensors of the official layout (after the YAML's renames) into q/k/v projections."""
        tc = self.config.text_config
        out: dict[str, Tensor] = {}
        for name, tensor in state.items():
            if name.endswith(".self_attn.wqkv.weight"):
                prefix, kind = name.removesuffix("wqkv.weight"), "weight"
                parts = split_wqkv(tensor, tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim)
            elif match := re.fullmatch(r"(.*\.attention\.)qkv\.(weight|bias)", name):
                (prefix, kind), parts = match.groups(), split_thirds(tensor)
            else:
                out[name] = tensor
                continue
            out.update({f"{prefix}{p}_proj.{kind}": t for p, t in zip("qkv", parts)})
        return out


class InternOmniModel(InternVLChatModel):
    """InternOmni: InternVL 2 plus the Whisper encoder (`audio_model`) and its projector `mlp2`."""

    def __init__(self, config: InternOmniConfig):
        super().__init__(config)
        self.audio_model = AudioModel(config.audio_config)
        self.mlp2 = projector(config.audio_config.d_model, config.text_config.hidden_size)

    def extract_audio_feature(self, audio_values: Tensor, frames_after_cnn: Tensor) -> Tensor:
        """[audios, pooled frames, d_model]: the official `extract_audio_feature` (encoder, LN, pool, `mlp2`)."""
        return self.mlp2(self.audio_model(audio_values.to(self.dtype), frames_after_cnn))
