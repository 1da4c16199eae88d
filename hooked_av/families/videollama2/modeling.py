"""VideoLLaMA2.1-AV as one torch module with the official parameter names: the Qwen2 LLM (`model.*`,
`lm_head`), the STC connector (`model.mm_projector`), BEATs (`model.audio_tower`) and its projector
(`model.mm_projector_a`), built from transformers' in-tree Qwen2 plus this package's pieces; and the SigLIP
tower (`vision_tower`, transformers' `SiglipVisionModel`), whose weights the official code reads from the folder
`mm_vision_tower` names, not from the checkpoint.

transformers has no VideoLLaMA2; the checkpoint's own code is never executed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn
from transformers import GenerationConfig, Qwen2Config, Qwen2Model, SiglipVisionConfig, SiglipVisionModel

from hooked_av.families.composite_config import CompositeConfig
from hooked_av.families.videollama2.beats import BEATs, BEATsConfig
from hooked_av.families.videollama2.stc import STCConnector
from hooked_av.model.errors import UnsupportedCheckpointError
from hooked_av.model.loading import safetensors_files

# config.json keys that are not the Qwen2 LLM's own
_NOT_LLM = ("beats_config", "auto_map", "architectures", "model_type", "transformers_version", "_name_or_path")
_VISION_WEIGHTS_PREFIX = "vision_model."


def vision_tower_folder(checkpoint: Path, name: str | None) -> Path:
    """The SigLIP folder `mm_vision_tower` names: relative to the checkpoint folder, a local path, or a hub id
    already in the local Hugging Face cache (nothing is downloaded)."""
    if not name:
        raise UnsupportedCheckpointError(f"{checkpoint}/config.json names no 'mm_vision_tower' (the SigLIP folder)")
    for candidate in (checkpoint / name, Path(name).expanduser()):
        if (candidate / "config.json").is_file():
            return candidate
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception as err:  # not a hub id, or not in the cache
        raise UnsupportedCheckpointError(
            f"the vision tower {name!r} (config.json 'mm_vision_tower') is neither a folder next to {checkpoint}, "
            f"a local folder, nor in the Hugging Face cache ({type(err).__name__}). Put the SigLIP checkpoint "
            f"(e.g. google/siglip-so400m-patch14-384) there, or set 'mm_vision_tower' to its local path") from err


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UnsupportedCheckpointError(f"cannot read {path} ({err})") from err


class VideoLLaMA2Config(CompositeConfig):
    """The official config.json (Qwen2 LLM fields at the top level, `mm_*` fields) plus the SigLIP tower's config,
    read from its own folder."""

    def __init__(self, vision_folder: Path | None = None, generation: dict[str, Any] | None = None, **config: Any):
        self.text_config = Qwen2Config(**{k: v for k, v in config.items() if k not in _NOT_LLM})
        self.vision_folder = vision_folder
        vision = read_json(vision_folder / "config.json") if vision_folder is not None else {}
        self.vision_config = SiglipVisionConfig(**vision.get("vision_config", vision))
        self.vision_select_layer: int = config.get("mm_vision_select_layer", -2)
        if config.get("mm_vision_select_feature", "patch") != "patch":
            raise UnsupportedCheckpointError("only mm_vision_select_feature 'patch' exists for the SigLIP tower")
        for key, supported in (("mm_projector_type", "stc_connector_v35"), ("mm_projector_a_type", "mlp2x_gelu")):
            if config.get(key, supported) != supported:
                raise UnsupportedCheckpointError(f"config.json {key} {config[key]!r}: only {supported!r} is "
                                                 "implemented (the VideoLLaMA2.1-AV release)")
        self.mm_hidden_size: int = config.get("mm_hidden_size", self.vision_config.hidden_size)
        self.mm_hidden_size_a: int = config.get("mm_hidden_size_a", 768)
        self.hidden_size_a: int = config.get("hidden_size_a", self.text_config.hidden_size)
        self.num_frames: int = config.get("num_frames", 8)  # the official constants.NUM_FRAMES when absent
        # the official inference path builds BEATs from its class defaults; `beats_config` only in test fixtures
        self.beats_config = BEATsConfig.from_dict(config.get("beats_config"))
        self.generation = generation or {}
        self.tie_word_embeddings: bool = self.text_config.tie_word_embeddings

    @classmethod
    def from_checkpoint_folder(cls, folder: Path, config: dict[str, Any]) -> VideoLLaMA2Config:
        generation = folder / "generation_config.json"
        return cls(vision_tower_folder(folder, config.get("mm_vision_tower")),
                   read_json(generation) if generation.is_file() else None, **config)


class VideoLLaMA2AV(nn.Module):
    def __init__(self, config: VideoLLaMA2Config):
        super().__init__()
        self.config = config
        self.generation_config = GenerationConfig(**config.generation)
        hidden = config.text_config.hidden_size
        self.model = Qwen2Model(config.text_config)
        self.model.mm_projector = STCConnector(config.mm_hidden_size, hidden)
        self.model.audio_tower = BEATs(config.beats_config)
        self.model.mm_projector_a = nn.Sequential(nn.Linear(config.mm_hidden_size_a, config.hidden_size_a), nn.GELU(),
                                                  nn.Linear(config.hidden_size_a, config.hidden_size_a))
        self.lm_head = nn.Linear(hidden, config.text_config.vocab_size, bias=False)
        self.vision_tower = SiglipVisionModel(config.vision_config)

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def tie_weights(self) -> None:
        self.lm_head.weight = self.model.embed_tokens.weight

    def external_state_dict(self, dtype: torch.dtype | None, device: str | torch.device) -> dict[str, Tensor]:
        """The SigLIP tower's tensors from its own folder (`vision_model.*` there, `vision_tower.*` here)."""
        folder = self.config.vision_folder
        if folder is None:
            return {}
        state = {}
        for file in safetensors_files(folder):
            with safe_open(str(file), framework="pt", device=str(device)) as f:
                for key in f.keys():
                    if key.startswith(_VISION_WEIGHTS_PREFIX):
                        t = f.get_tensor(key)
                        state["vision_tower." + key.removeprefix(_VISION_WEIGHTS_PREFIX)] = (
                            t.to(dtype) if dtype is not None and t.is_floating_point() else t)
        return state

    # ---- encoders ---------------------------------------------------------------------------------------
    def video_tower_features(self, pixels: Tensor) -> Tensor:
        """[batch, frames, 3, S, S] -> [batch, frames, patches, d_vision]: SigLIP hidden_states[select_layer]."""
        b, t = pixels.shape[:2]
        out = self.vision_tower(pixel_values=pixels.flatten(0, 1), output_hidden_states=True)
        return out.hidden_states[self.config.vision_select_layer].unflatten(0, (b, t))

    def encode_video(self, pixels: Tensor) -> Tensor:
        return self.model.mm_projector(self.video_tower_features(pixels))

    def encode_audio(self, fbank: Tensor) -> Tensor:
        return self.model.mm_projector_a(self.model.audio_tower(fbank))
