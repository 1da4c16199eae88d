"""Qwen2.5-VL: the base vision-language model of Qwen2.5-Omni. Same decoder, mRoPE over vision grids."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hooked_av.model.adapter import Batch, FamilyAdapter, text_positions, vision_features
from hooked_av.families.chat import build_samples
from hooked_av.model.errors import InputError
from hooked_av.model.modality import Modality


class Qwen25VLAdapter(FamilyAdapter):
    def encode(self, batch: Batch) -> dict[Modality, Tensor]:
        return vision_features(self.hf_model.model, batch)

    def mm_token_type_ids(self, input_ids: Tensor) -> Tensor:
        """0 text, 1 image, 2 video: what get_rope_index reads (HF silently uses 1-D positions without it)."""
        types = torch.zeros_like(input_ids, dtype=torch.int32)
        types[input_ids == self.hf_config.image_token_id] = 1
        types[input_ids == self.hf_config.video_token_id] = 2
        return types

    def position_ids(self, batch: Batch) -> Tensor:
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(ids)
        image_thw, video_thw = batch.get("image_grid_thw"), batch.get("video_grid_thw")
        if image_thw is None and video_thw is None:
            return text_positions(mask).expand(3, -1, -1)
        types = batch.get("mm_token_type_ids")
        positions, _ = self.hf_model.model.get_rope_index(
            ids, types if types is not None else self.mm_token_type_ids(ids), image_grid_thw=image_thw,
            video_grid_thw=video_thw, second_per_grid_ts=batch.get("second_per_grid_ts"), attention_mask=mask)
        return positions

    def prepare_inputs(self, prompt: str | list[str], video: Any = None, audio: Any = None, image: Any = None, *,
                       use_audio_in_video: bool = False, fps: float = 2.0, system_prompt: str | None = None,
                       **processor_kwargs: Any) -> Batch:
        if audio is not None or use_audio_in_video:
            raise InputError("Qwen2.5-VL has no audio input: give it the video without audio")
        from transformers.video_utils import VideoMetadata

        processor = self.require_processor("prepare_inputs")
        samples = build_samples(prompt, video, None, image, fps=fps, sampling_rate=16000,
                                use_audio_in_video=False, system_prompt=system_prompt)
        texts = [processor.apply_chat_template(s.messages, add_generation_prompt=True, tokenize=False)
                 for s in samples]
        videos = [s.video for s in samples if s.video is not None]
        images = [s.image for s in samples if s.image is not None]
        processor_kwargs.setdefault("padding_side", "left")  # generation appends after the last position
        kwargs: dict[str, Any] = dict(return_tensors="pt", padding=True, return_mm_token_type_ids=True,
                                      **processor_kwargs)
        if videos:
            # Without metadata the processor assumes 24 fps frames and collapses the temporal positions.
            kwargs.update(do_sample_frames=False, cap_pixels_per_frame=True, video_metadata=[
                VideoMetadata(total_num_frames=len(v), fps=fps, duration=len(v) / fps) for v in videos])
        return dict(processor(text=texts, videos=videos or None, images=images or None, **kwargs))


ADAPTER = Qwen25VLAdapter
