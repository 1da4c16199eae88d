"""MiniCPM-o 2.6 adapter: Qwen2 decoder (1-D RoPE) fed by a SigLIP NaViT tower + resampler and a Whisper encoder.

All of its modalities use one placeholder token (`<unk>`); which slots are image, video or audio is read from the
markers around them: `<image>`/`<slice>` ... `</image>`/`</slice>` spans are images, except the frames of the
omni recipe (an `<image>` span right after `<unit>`), which are video; `<|audio_start|>` ... `<|audio_end|>`
spans are audio.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from hooked_av.data.media import load_audio, load_image, load_video
from hooked_av.model.adapter import Batch, FamilyAdapter, text_positions
from hooked_av.families.chat import MediaPath, per_sample, to_pil
from hooked_av.families.minicpm_o.modeling import MiniCPMO
from hooked_av.families.minicpm_o.navit import encode_images
from hooked_av.families.minicpm_o.processor import OMNI_SYSTEM_PROMPT, MiniCPMOProcessor
from hooked_av.families.whisper_frames import encoder_lengths
from hooked_av.model.errors import InputError, MissingProcessorError, PlaceholderMismatchError
from hooked_av.model.family_spec import FamilySpec
from hooked_av.model.modality import Modality


class MiniCPMOAdapter(FamilyAdapter):
    def __init__(self, spec: FamilySpec, hf_model: MiniCPMO, processor: MiniCPMOProcessor | None = None):
        super().__init__(spec, hf_model, processor)
        if processor is None:
            raise MissingProcessorError(
                "MiniCPM-o finds its image, video and audio slots from marker tokens looked up in the tokenizer: "
                "load a checkpoint folder with its tokenizer files, or pass processor=MiniCPMOProcessor.from_pretrained"
                "(folder)")
        m = processor.markers
        ids = processor.token_id
        self.unk = ids(m.unk)
        self.image_opens = torch.tensor([ids(m.image_start), ids(m.slice_start)])
        self.image_closes = torch.tensor([ids(m.image_end), ids(m.slice_end)])
        self.audio_open, self.audio_close = ids(m.audio_start), ids(m.audio_end)
        self.frame_open, self.unit = ids(m.image_start), ids(m.unit)

    # ---- where each modality sits --------------------------------------------------------------------------
    def placeholder_ids(self) -> dict[Modality, int]:
        return {Modality.IMAGE: self.unk, Modality.VIDEO: self.unk, Modality.AUDIO: self.unk}

    def placeholder_masks(self, input_ids: Tensor) -> dict[Modality, Tensor]:
        image_spans = span_mask(input_ids, self.image_opens, self.image_closes)
        video = image_spans & self.opened_by_frame(input_ids)
        audio = span_mask(input_ids, torch.tensor([self.audio_open]), torch.tensor([self.audio_close]))
        return {Modality.IMAGE: image_spans & ~video, Modality.VIDEO: video, Modality.AUDIO: audio}

    def frame_openers(self, input_ids: Tensor) -> Tensor:
        """[batch, pos] True at each `<image>` of an omni frame (right after `<unit>`)."""
        after_unit = torch.zeros_like(input_ids, dtype=torch.bool)
        after_unit[:, 1:] = input_ids[:, :-1] == self.unit
        return (input_ids == self.frame_open) & after_unit

    def opened_by_frame(self, input_ids: Tensor) -> Tensor:
        """[batch, pos] True where the latest image/slice opener at or before the position is an omni frame's."""
        opens = torch.isin(input_ids, self.image_opens.to(input_ids.device))
        index = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        last = torch.where(opens, index, -1).cummax(dim=-1).values
        return self.frame_openers(input_ids).gather(-1, last.clamp(min=0)) & (last >= 0)

    # ---- encoders ------------------------------------------------------------------------------------------
    def encode(self, batch: Batch) -> dict[Modality, Tensor]:
        out: dict[Modality, Tensor] = {}
        strips = [s for row in batch.get("pixel_values") or [] for s in row]
        if strips:
            out.update(self.encode_vision(batch["input_ids"], strips, batch))
        features = batch.get("audio_features")
        if features is not None and len(features):
            out[Modality.AUDIO] = self.encode_audio(features, batch)
        return out

    def encode_vision(self, input_ids: Tensor, strips: list[Tensor], batch: Batch) -> dict[Modality, Tensor]:
        """Resampler outputs (query_num tokens per image / slice / frame), split into image and video."""
        model = self.hf_model
        dtype, device = model.dtype, model.llm.device
        sizes = torch.cat([torch.as_tensor(t).reshape(-1, 2) for t in batch["tgt_sizes"]]).long()
        patches = encode_images(model.vpm, [s.to(device, dtype) for s in strips], sizes,
                                model.config.vision_batch_size)
        tokens = model.resampler(patches, [tuple(s) for s in sizes.tolist()])
        opens = torch.isin(input_ids, self.image_opens.to(input_ids.device))
        is_frame = self.frame_openers(input_ids)[opens]  # one entry per image span, row-major
        if is_frame.numel() != tokens.shape[0]:
            raise PlaceholderMismatchError(
                f"input_ids open {is_frame.numel()} image/slice spans but the batch has {tokens.shape[0]} images "
                "and slices: input_ids and pixel_values do not belong together (run the processor on both)")
        split = {Modality.IMAGE: tokens[~is_frame.to(tokens.device)], Modality.VIDEO: tokens[is_frame.to(tokens.device)]}
        return {m: t.flatten(0, 1) for m, t in split.items() if t.shape[0]}

    def encode_audio(self, features: Tensor, batch: Batch) -> Tensor:
        """Projected, 2x average-pooled Whisper outputs of every segment, concatenated in order."""
        model, cfg = self.hf_model, self.hf_model.config
        device = model.llm.device
        mel_frames = torch.cat([torch.as_tensor(n).reshape(-1) for n in batch["audio_feature_lens"]]).long().to(device)
        chunk = int(cfg.audio_chunk_length * 50) if cfg.audio_chunk_length > 0 else features.shape[-1]
        hidden = model.apm(features.to(device, model.dtype), mel_frames, chunk)
        pooled = F.avg_pool1d(model.audio_projection_layer(hidden).transpose(1, 2), cfg.audio_pool_step,
                              cfg.audio_pool_step).transpose(1, 2)
        counts = (encoder_lengths(mel_frames) - cfg.audio_pool_step) // cfg.audio_pool_step + 1
        return torch.cat([pooled[i, :n] for i, n in enumerate(counts.tolist())])

    def position_ids(self, batch: Batch) -> Tensor:
        return text_positions(batch["attention_mask"])

    # ---- inputs --------------------------------------------------------------------------------------------
    def prepare_inputs(self, prompt: str | list[str] | None = None, video: Any = None, audio: Any = None,
                       image: Any = None, *, use_audio_in_video: bool = False, fps: float = 2.0,
                       system_prompt: str | None = None, messages: Any = None, omni_input: bool = False,
                       use_tts_template: bool | None = None, max_slice_nums: int | None = None,
                       use_image_id: bool | None = None, chunk_input: bool = True) -> Batch:
        """`messages=`: the official chat() format with its options. Otherwise a prompt with media: video (with
        or without audio) follows the official omni recipe, one `<unit>`, frame and second of audio per second."""
        processor = self.require_processor("prepare_inputs")
        if messages is not None:
            if prompt is not None or video is not None or audio is not None or image is not None:
                raise InputError("pass either messages=... or a prompt with media, not both")
            return processor(messages, omni_input=omni_input, use_tts_template=use_tts_template,
                             max_slice_nums=max_slice_nums, use_image_id=use_image_id, chunk_input=chunk_input)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        sr = processor.feature_extractor.sampling_rate
        conversations, omni = [], False
        for text, v, a, im in zip(prompts, *(per_sample(x, len(prompts), n) for x, n in
                                             ((video, "video"), (audio, "audio"), (image, "image")))):
            if v is not None and a is None and use_audio_in_video:
                if not isinstance(v, MediaPath):
                    raise InputError("use_audio_in_video=True with video frames needs the sound track as audio=...")
                a = v
            frames = load_video(v, fps) if isinstance(v, MediaPath) else v
            wave = load_audio(a, sr) if a is not None else None
            picture = load_image(im) if isinstance(im, MediaPath) else im
            conversations.append(media_messages(text, frames, wave, picture, fps, sr, system_prompt))
            omni = omni or frames is not None
        options = dict(omni_input=True, use_tts_template=True, max_slice_nums=1, use_image_id=False) if omni else {}
        return processor(conversations, chunk_input=chunk_input, **options)


def span_mask(input_ids: Tensor, opens: Tensor, closes: Tensor) -> Tensor:
    """[batch, pos] True strictly between an opening and its closing marker."""
    is_open = torch.isin(input_ids, opens.to(input_ids.device))
    depth = is_open.long().cumsum(-1) - torch.isin(input_ids, closes.to(input_ids.device)).long().cumsum(-1)
    return (depth > 0) & ~is_open


def media_messages(prompt: str, frames: np.ndarray | None, wave: np.ndarray | None, image: Any, fps: float,
                   sampling_rate: int, system_prompt: str | None) -> list[dict[str, Any]]:
    """The official message layout for a prompt and media.

    Video: the official omni recipe (a user-role system message, then for each started second of the video
    `<unit>`, the frame shown at the end of that second and that second of audio; audio past the video's end is
    dropped), the prompt last. Audio alone: prompt, then audio (the official ASR layout). Image: image, then
    prompt.
    """
    if frames is None:
        content: list[Any] = ([to_pil(image)] if image is not None else []) + [prompt]
        if wave is not None:
            content.append(wave)
        system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
        return system + [{"role": "user", "content": content}]
    if image is not None:
        raise InputError("MiniCPM-o's omni recipe takes a video with its audio; give the image separately")
    units: list[Any] = []
    for k in range(math.ceil(len(frames) / fps)):  # the video's duration, in started seconds
        units += ["<unit>", to_pil(frames[min(round((k + 1) * fps), len(frames) - 1)])]
        second = wave[k * sampling_rate:(k + 1) * sampling_rate] if wave is not None else None
        if second is not None and len(second):  # an empty slice would add no tokens: the same as none
            units.append(second)
    system = OMNI_SYSTEM_PROMPT if system_prompt is None else system_prompt
    return [{"role": "user", "content": [system]}, {"role": "user", "content": units + [prompt]}]


ADAPTER = MiniCPMOAdapter
