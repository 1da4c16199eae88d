"""VideoLLaMA2.1-AV adapter: a Qwen2 decoder (1-D RoPE) fed by SigLIP + the STC connector (video, images) and
BEATs + an MLP (audio). Every encoder output fills one placeholder position (see processor.py)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from hooked_av.data.media import load_audio, load_image, load_video
from hooked_av.model.adapter import Batch, FamilyAdapter, text_positions
from hooked_av.families.chat import MediaPath, per_sample
from hooked_av.families.videollama2.modeling import VideoLLaMA2AV
from hooked_av.families.videollama2.processor import SAMPLE_RATE, VideoLLaMA2Processor, uniform_frame_indices
from hooked_av.model.errors import InputError, MissingProcessorError, UnsupportedCheckpointError
from hooked_av.model.family_spec import FamilySpec
from hooked_av.model.modality import Modality

# batch key -> (modality, encoder)
MEDIA = {"pixel_values_videos": (Modality.VIDEO, "encode_video"), "pixel_values": (Modality.IMAGE, "encode_video"),
         "audio_fbank": (Modality.AUDIO, "encode_audio")}


class VideoLLaMA2Adapter(FamilyAdapter):
    def __init__(self, spec: FamilySpec, hf_model: VideoLLaMA2AV, processor: VideoLLaMA2Processor | None = None):
        super().__init__(spec, hf_model, processor)
        if processor is None:
            raise MissingProcessorError(
                "VideoLLaMA2's placeholder ids follow its tokenizer: load a checkpoint folder with its tokenizer "
                "files, or pass processor=VideoLLaMA2Processor.from_pretrained(folder)")
        vocab = self.text_config.vocab_size
        if max(processor.placeholder_ids.values()) >= vocab:
            raise UnsupportedCheckpointError(
                f"VideoLLaMA2 places its media tokens on the embedding rows past the tokenizer "
                f"({sorted(processor.placeholder_ids.values())}), but vocab_size is {vocab}")

    def placeholder_ids(self) -> dict[Modality, int]:
        return dict(self.processor.placeholder_ids)

    def encode(self, batch: Batch) -> dict[Modality, Tensor]:
        model = self.hf_model
        out = {}
        for key, (modality, encoder) in MEDIA.items():
            if batch.get(key) is not None:
                out[modality] = getattr(model, encoder)(batch[key].to(model.lm_head.weight.device, model.dtype))
        return {m: t.flatten(0, 1) for m, t in out.items()}

    def position_ids(self, batch: Batch) -> Tensor:
        return text_positions(batch["attention_mask"])

    def repetition_penalty(self) -> float | None:
        """The checkpoint's generation_config.json value, which the official greedy call keeps active."""
        return getattr(self.hf_model.generation_config, "repetition_penalty", None)

    def prepare_inputs(self, prompt: str | list[str], video: Any = None, audio: Any = None, image: Any = None, *,
                       use_audio_in_video: bool = False, fps: float = 2.0) -> Batch:
        """Video (frames, or a file sampled as the official code does) with audio (a waveform, or the file's own
        sound track with use_audio_in_video=True) is the paper's audio-visual input; audio alone, an image, or
        text are the other official modes. `fps` is unused: the official sampler takes num_frames frames."""
        processor = self.require_processor("prepare_inputs")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        videos, audios, images = (per_sample(x, len(prompts), n) for x, n in
                                  ((video, "video"), (audio, "audio"), (image, "image")))
        for i, v in enumerate(videos):
            if use_audio_in_video and audios[i] is None:
                if not isinstance(v, MediaPath):
                    raise InputError("use_audio_in_video=True with video frames needs the sound track as audio=...")
                audios[i] = load_audio(v, SAMPLE_RATE)
            if isinstance(v, MediaPath):
                frames = load_video(v, fps=float("inf"))  # every decoded frame, then the official sampler
                videos[i] = frames[uniform_frame_indices(len(frames), processor.num_frames)]
        audios = [load_audio(a, SAMPLE_RATE) if isinstance(a, MediaPath) else a for a in audios]
        images = [load_image(m) if isinstance(m, MediaPath) else m for m in images]
        return processor(prompts, videos, audios, images)


ADAPTER = VideoLLaMA2Adapter
