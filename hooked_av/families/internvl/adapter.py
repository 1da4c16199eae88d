"""InternVL 2 and InternOmni adapter: InternLM2 decoder (1-D RoPE) fed by InternViT tiles and, for InternOmni,
the Whisper encoder.

Images and video frames share the placeholder `<IMG_CONTEXT>`: an `<img>` block whose text right before reads
`FrameN: ` (the InternVL 2 video recipe) is a video frame, any other an image. Audio fills `<AUDIO_CONTEXT>`.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from hooked_av.data.media import load_audio, load_image, load_video
from hooked_av.model.adapter import Batch, FamilyAdapter, require, text_positions
from hooked_av.families.chat import MediaPath, per_sample, to_pil
from hooked_av.families.internvl.modeling import InternOmniModel, InternVLChatModel
from hooked_av.families.internvl.processor import AUDIO, IMAGE, InternVLProcessor, Row
from hooked_av.families.internvl.whisper import SAMPLING_RATE
from hooked_av.model.errors import InputError, MissingProcessorError, PlaceholderMismatchError
from hooked_av.model.family_spec import FamilySpec
from hooked_av.model.modality import Modality

FRAME_LABEL = re.compile(r"Frame\d+:\s*$")
LABEL_TOKENS = 8  # enough tokens before an <img> to read "FrameN: "


class InternVLAdapter(FamilyAdapter):
    def __init__(self, spec: FamilySpec, hf_model: InternVLChatModel, processor: InternVLProcessor | None = None):
        super().__init__(spec, hf_model, processor)
        if processor is None:
            raise MissingProcessorError(
                "InternVL finds its image, video and audio slots from tokens looked up in the tokenizer: load a "
                "checkpoint folder with its tokenizer files, or pass processor=InternVLProcessor.from_pretrained"
                "(folder)")
        m = processor.markers
        self.img_start, self.img_context = processor.token_id(m.img_start), processor.token_id(m.img_context)
        self.has_audio = isinstance(hf_model, InternOmniModel)
        self.audio_context = processor.token_id(m.audio_context) if self.has_audio else None

    # ---- where each modality sits --------------------------------------------------------------------------
    def placeholder_ids(self) -> dict[Modality, int]:
        ids = {Modality.IMAGE: self.img_context, Modality.VIDEO: self.img_context}
        return ids | ({Modality.AUDIO: self.audio_context} if self.has_audio else {})

    def frame_openers(self, input_ids: Tensor) -> Tensor:
        """[batch, pos] True at each `<img>` whose text right before reads `FrameN: `."""
        decode = self.processor.tokenizer.decode
        out = torch.zeros_like(input_ids, dtype=torch.bool)
        for row, pos in (input_ids == self.img_start).nonzero().tolist():
            label = decode(input_ids[row, max(0, pos - LABEL_TOKENS):pos].tolist())
            out[row, pos] = FRAME_LABEL.search(label) is not None
        return out

    def placeholder_masks(self, input_ids: Tensor) -> dict[Modality, Tensor]:
        slots = input_ids == self.img_context
        opens = input_ids == self.img_start
        index = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        last_open = torch.where(opens, index, -1).cummax(dim=-1).values  # the <img> each slot belongs to
        video = slots & self.frame_openers(input_ids).gather(-1, last_open.clamp(min=0)) & (last_open >= 0)
        masks = {Modality.IMAGE: slots & ~video, Modality.VIDEO: video}
        return masks | ({Modality.AUDIO: input_ids == self.audio_context} if self.has_audio else {})

    # ---- encoders ------------------------------------------------------------------------------------------
    def encode(self, batch: Batch) -> dict[Modality, Tensor]:
        out: dict[Modality, Tensor] = {}
        if batch.get("pixel_values") is not None:
            out.update(self.encode_tiles(batch))
        if batch.get("audio_values") is not None:
            out[Modality.AUDIO] = self.encode_audio(batch)
        return out

    def encode_tiles(self, batch: Batch) -> dict[Modality, Tensor]:
        """`mlp1` outputs of every tile, split into image and video by the `<img>` block each tile fills."""
        model = self.hf_model
        per_block = require(batch, "num_patches_list", "gives the number of tiles of each <img> block")
        features = model.extract_feature(batch["pixel_values"].to(model.language_model.device))
        ids = batch["input_ids"]
        is_frame = self.frame_openers(ids)[ids == self.img_start]  # one entry per <img> block, row-major
        per_block = torch.as_tensor(per_block).reshape(-1).tolist()
        if len(per_block) != is_frame.numel() or sum(per_block) != features.shape[0]:
            raise PlaceholderMismatchError(
                f"input_ids open {is_frame.numel()} <img> blocks, num_patches_list has {len(per_block)} entries "
                f"for {sum(per_block)} tiles and pixel_values holds {features.shape[0]} tiles: they do not belong "
                "together (run prepare_inputs on the same media)")
        blocks = features.split(per_block)
        out = {}
        for modality, wanted in ((Modality.IMAGE, False), (Modality.VIDEO, True)):
            chosen = [b.flatten(0, 1) for b, frame in zip(blocks, is_frame.tolist()) if frame == wanted]
            if chosen:
                out[modality] = torch.cat(chosen)
        return out

    def encode_audio(self, batch: Batch) -> Tensor:
        """The first `audio_token_num` rows of each audio's embeddings, all audios of the batch encoded at once (as
        the official code does: a shorter audio's convolutions see the log-mel frames after its end)."""
        if not self.has_audio:
            raise InputError("InternVL 2 has no audio encoder: give audio to InternOmni")
        model = self.hf_model
        device = model.language_model.device
        frames = require(batch, "audio_len_after_cnn", "gives each audio's encoder length").reshape(-1).to(device)
        counts = require(batch, "audio_token_num", "gives each audio's LLM tokens").reshape(-1).tolist()
        embeds = model.extract_audio_feature(batch["audio_values"].to(device), frames)
        return torch.cat([embeds[i, :n] for i, n in enumerate(counts)])

    def position_ids(self, batch: Batch) -> Tensor:
        limit = self.text_config.max_position_embeddings
        if int(batch["attention_mask"].sum(-1).max()) > limit:
            # the official InternLM2 switches to dynamic NTK RoPE there (and keeps it); the hooked core does not
            raise InputError(f"a prompt longer than {limit} tokens: InternLM2's rotary base changes beyond "
                             "max_position_embeddings (dynamic NTK), which this library does not reproduce; use "
                             "fewer frames or tiles")
        return text_positions(batch["attention_mask"])

    # ---- inputs --------------------------------------------------------------------------------------------
    def prepare_inputs(self, prompt: str | list[str], video: Any = None, audio: Any = None, image: Any = None, *,
                       use_audio_in_video: bool = False, fps: float = 2.0, system_prompt: str | None = None) -> Batch:
        """The official prompt for each row: `<image>\\n` for an image or `FrameN: <image>\\n` per video frame
        (sampled at `fps`, one tile each), then `<audio>\\n`, then the prompt, unless the prompt already holds
        `<image>` / `<audio>` placeholders (then it is used as written). Rows are left-padded with `</s>`."""
        processor: InternVLProcessor = self.require_processor("prepare_inputs")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        rows = []
        for text, v, a, im in zip(prompts, *(per_sample(x, len(prompts), n) for x, n in
                                             ((video, "video"), (audio, "audio"), (image, "image")))):
            if use_audio_in_video and a is None:
                if not isinstance(v, MediaPath):
                    raise InputError("use_audio_in_video=True needs a video file, or the sound track as audio=...")
                a = v
            rows.append(self.row(processor, text, load_video(v, fps) if isinstance(v, MediaPath) else v,
                                 load_audio(a, SAMPLING_RATE) if a is not None else None,
                                 load_image(im) if isinstance(im, MediaPath) else im))
        return processor(rows, system_prompt)

    def row(self, processor: InternVLProcessor, text: str, frames: Any, wave: Any, image: Any) -> Row:
        if frames is not None and image is not None:
            raise InputError("give an image or a video per prompt, not both (the official layouts have one)")
        if wave is not None and not self.has_audio:
            raise InputError("InternVL 2 has no audio input: give it the video or image without audio")
        tiles, prefix = [], ""
        if image is not None:
            tiles, prefix = [processor.image_tiles(to_pil(image))], f"{IMAGE}\n"
        if frames is not None:
            tiles = [[processor.frame_tile(to_pil(f))] for f in frames]
            prefix = "".join(f"Frame{i + 1}: {IMAGE}\n" for i in range(len(frames)))
        if wave is not None:
            prefix += f"{AUDIO}\n"
        written = IMAGE in text or AUDIO in text
        return Row(text if written else prefix + text, tiles, wave)


ADAPTER = InternVLAdapter
