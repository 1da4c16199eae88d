"""Qwen2.5-Omni thinker: Whisper-style audio tower and windowed ViT reused from HF, TMRoPE positions."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hooked_av.model.adapter import Batch, FamilyAdapter, require, vision_features
from hooked_av.families.chat import build_samples
from hooked_av.model.errors import InputError
from hooked_av.model.modality import Modality


class Qwen25OmniAdapter(FamilyAdapter):
    def encode(self, batch: Batch) -> dict[Modality, Tensor]:
        thinker = self.hf_model.model
        out = vision_features(thinker, batch)
        if batch.get("input_features") is not None:
            fam = require(batch, "feature_attention_mask", "marks the valid mel frames of each audio")
            out[Modality.AUDIO] = thinker.get_audio_features(batch["input_features"], fam,
                                                             return_dict=True).last_hidden_state
        return out

    def _check_interleaving(self, input_ids: Tensor, use_audio_in_video: bool) -> None:
        # The processor writes <|vision_bos|><|audio_bos|> exactly when it interleaved the sound track into the
        # video; positions computed under the other setting would be silently wrong.
        cfg = self.hf_config
        adjacent = (input_ids[:, :-1] == cfg.vision_start_token_id) & (input_ids[:, 1:] == cfg.audio_start_token_id)
        interleaved = bool(adjacent.any())
        if interleaved != use_audio_in_video:
            raise InputError(
                f"use_audio_in_video={use_audio_in_video}, but the input_ids {'do' if interleaved else 'do not'} "
                "hold audio interleaved into video. Pass the use_audio_in_video the batch was processed with "
                "(batches from model.prepare_inputs carry it).")

    def position_ids(self, batch: Batch) -> Tensor:
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(ids)
        use_aiv = bool(batch.get("use_audio_in_video", False))
        self._check_interleaving(ids, use_aiv)
        fam = batch.get("feature_attention_mask")
        positions, _ = self.hf_model.model.get_rope_index(
            ids, batch.get("image_grid_thw"), batch.get("video_grid_thw"), mask, use_aiv,
            fam.sum(-1) if fam is not None else None, batch.get("video_second_per_grid"))
        return positions

    def prepare_inputs(self, prompt: str | list[str], video: Any = None, audio: Any = None, image: Any = None, *,
                       use_audio_in_video: bool = False, fps: float = 2.0, system_prompt: str | None = None,
                       **processor_kwargs: Any) -> Batch:
        processor = self.require_processor("prepare_inputs")
        sr = processor.feature_extractor.sampling_rate
        samples = build_samples(prompt, video, audio, image, fps=fps, sampling_rate=sr,
                                use_audio_in_video=use_audio_in_video, system_prompt=system_prompt)
        texts = [processor.apply_chat_template(s.messages, add_generation_prompt=True, tokenize=False)
                 for s in samples]
        videos = [s.video for s in samples if s.video is not None]
        audios = [s.audio for s in samples if s.audio is not None]
        images = [s.image for s in samples if s.image is not None]
        processor_kwargs.setdefault("padding_side", "left")  # generation appends after the last position
        kwargs: dict[str, Any] = dict(return_tensors="pt", padding=True, **processor_kwargs)
        if videos:
            kwargs.update(fps=fps, cap_pixels_per_frame=True)
        if use_audio_in_video:
            kwargs.update(audio_from_video_indices=list(range(len(videos))), load_audio_from_video=True)
        batch = dict(processor(text=texts, videos=videos or None, audio=audios or None, images=images or None,
                               **kwargs))
        batch["use_audio_in_video"] = use_audio_in_video
        return batch


ADAPTER = Qwen25OmniAdapter
