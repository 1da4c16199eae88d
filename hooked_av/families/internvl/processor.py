"""InternVL 2 / InternOmni inputs without the checkpoints' remote code: the `internlm2-chat` template, dynamic
tiling, one tile per video frame, Whisper log-mel features, and placeholder expansion, as the official code writes
them (`Chat.ask` / `Chat.answer` for InternOmni, `InternVLChatModel.chat` for InternVL 2).

Layout of a user turn: `<image>\\n` (an image) or `Frame1: <image>\\nFrame2: <image>\\n...` (video frames), then
`<audio>\\n`, then the question. Each `<image>` becomes `<img>` + `<IMG_CONTEXT>` x tokens-per-tile x tiles +
`</img>`, the `<audio>` placeholder `<audio>` + `<AUDIO_CONTEXT>` x audio tokens + `</audio>` (the start tag is
the placeholder string itself, so it is replaced once).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from hooked_av.families.internvl.tiling import tile_image
from hooked_av.families.internvl.tokenizer import InternLM2Tokenizer
from hooked_av.families.internvl.whisper import SAMPLING_RATE, audio_token_counts
from hooked_av.model.errors import InputError, UnsupportedCheckpointError

DEFAULT_SYSTEM_MESSAGE = ("你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, "
                          "是一个有用无害的人工智能助手。")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE, AUDIO = "<image>", "<audio>"


@dataclass(frozen=True)
class Markers:
    img_start: str = "<img>"
    img_end: str = "</img>"
    img_context: str = "<IMG_CONTEXT>"
    audio_start: str = "<audio>"
    audio_end: str = "</audio>"
    audio_context: str = "<AUDIO_CONTEXT>"


@dataclass
class Row:
    """One prompt's media, loaded: tiles per `<image>` block, an optional waveform."""

    question: str
    tiles: list[list[Image.Image]]
    wave: np.ndarray | None = None


class InternVLProcessor:
    """Tokenizer, tiling and (InternOmni) audio features of an InternVL 2 / InternOmni checkpoint folder."""

    markers = Markers()

    def __init__(self, tokenizer: InternLM2Tokenizer, vlm_config: dict[str, Any], feature_extractor: Any = None):
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        vision = vlm_config["vision_config"]
        self.image_size: int = vlm_config.get("force_image_size") or vision["image_size"]
        ratio = vlm_config.get("downsample_ratio", 0.5)
        self.tokens_per_tile = int((self.image_size // vision["patch_size"]) ** 2 * ratio ** 2)
        self.dynamic = vlm_config.get("dynamic_image_size", False)
        self.min_tiles = vlm_config.get("min_dynamic_patch", 1)
        self.max_tiles = vlm_config.get("max_dynamic_patch", 6)
        self.use_thumbnail = vlm_config.get("use_thumbnail", False)
        template = vlm_config.get("template", "internlm2-chat")
        if template != "internlm2-chat":
            raise UnsupportedCheckpointError(f"chat template {template!r}: only 'internlm2-chat' (InternLM2 LLMs) "
                                             "is supported")
        self.transform = T.Compose([T.Resize((self.image_size, self.image_size), T.InterpolationMode.BICUBIC),
                                    T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> InternVLProcessor:
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        tokenizer = InternLM2Tokenizer.from_pretrained(str(folder), local_files_only=True)
        feature_extractor = None
        if (folder / "preprocessor_config.json").is_file():
            from transformers import WhisperFeatureExtractor

            feature_extractor = WhisperFeatureExtractor.from_pretrained(str(folder), local_files_only=True)
        return cls(tokenizer, config, feature_extractor)

    def token_id(self, token: str) -> int:
        return self.tokenizer.convert_tokens_to_ids(token)

    # ---- media ---------------------------------------------------------------------------------------------
    def image_tiles(self, image: Image.Image) -> list[Image.Image]:
        """An image's tiles (dynamic tiling when the checkpoint uses it, else one resized tile)."""
        image = image.convert("RGB")
        if not self.dynamic:
            return [image]
        return tile_image(image, self.image_size, self.min_tiles, self.max_tiles, self.use_thumbnail)

    def frame_tile(self, frame: Image.Image) -> Image.Image:
        """A video frame is one tile (the InternVL 2 video recipe: `max_num=1`, no thumbnail)."""
        return tile_image(frame.convert("RGB"), self.image_size, 1, 1, use_thumbnail=False)[0]

    def pixel_values(self, tiles: list[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(t) for t in tiles])

    def audio_features(self, waves: list[np.ndarray]) -> dict[str, torch.Tensor]:
        if self.feature_extractor is None:
            raise InputError("this checkpoint has no audio encoder (no preprocessor_config.json): InternVL 2 takes "
                             "images and video only; InternOmni takes audio")
        features = [self.feature_extractor(np.asarray(w, dtype=np.float32), sampling_rate=SAMPLING_RATE,
                                           return_tensors="pt")["input_features"] for w in waves]
        counts = [audio_token_counts(len(w)) for w in waves]
        return {"audio_values": torch.cat(features),
                "audio_len_after_cnn": torch.tensor([c[0] for c in counts]),
                "audio_token_num": torch.tensor([c[1] for c in counts])}

    # ---- text ----------------------------------------------------------------------------------------------
    def chat_prompt(self, question: str, system_prompt: str | None = None) -> str:
        """The `internlm2-chat` template (no newline after `<|im_end|>`; the tokenizer adds `<s>`)."""
        system = DEFAULT_SYSTEM_MESSAGE if system_prompt is None else system_prompt
        return (f"<|im_start|>system\n{system}<|im_end|><|im_start|>user\n{question}<|im_end|>"
                "<|im_start|>assistant\n")

    def expand(self, prompt: str, tiles_per_image: list[int], audio_tokens: int | None) -> str:
        m = self.markers
        if prompt.count(IMAGE) != len(tiles_per_image):
            raise InputError(f"the prompt has {prompt.count(IMAGE)} {IMAGE} placeholders for {len(tiles_per_image)} "
                             "images / video frames")
        for tiles in tiles_per_image:
            prompt = prompt.replace(IMAGE, m.img_start + m.img_context * self.tokens_per_tile * tiles + m.img_end, 1)
        if audio_tokens is not None:
            if AUDIO not in prompt:
                raise InputError(f"the prompt has no {AUDIO} placeholder for its audio")
            prompt = prompt.replace(AUDIO, m.audio_start + m.audio_context * audio_tokens + m.audio_end, 1)
        return prompt

    def __call__(self, rows: list[Row], system_prompt: str | None = None) -> dict[str, Any]:
        """The batch of prompts (left-padded with `</s>`), their tiles and audio features."""
        waves = [r.wave for r in rows if r.wave is not None]
        audio = self.audio_features(waves) if waves else {}
        counts = iter(audio["audio_token_num"].tolist()) if waves else iter(())
        texts = [self.expand(self.chat_prompt(r.question, system_prompt), [len(t) for t in r.tiles],
                             next(counts) if r.wave is not None else None) for r in rows]
        batch: dict[str, Any] = dict(self.tokenizer(texts, return_tensors="pt", padding="longest",
                                                    padding_side="left"))
        batch.pop("token_type_ids", None)
        tiles = [t for r in rows for block in r.tiles for t in block]
        if tiles:
            batch["pixel_values"] = self.pixel_values(tiles)
            batch["num_patches_list"] = torch.tensor([len(block) for r in rows for block in r.tiles])
        return {**batch, **audio}
