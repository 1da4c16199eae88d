"""VideoLLaMA2.1-AV's processing, as the official `mm_infer` / `process_video` / `process_audio_file` do it, with
no remote code: the Qwen2-Instruct chat template with the modal tag at the start of the user turn, chunk-wise
tokenisation around the tag, SigLIP frame preprocessing (frames squashed to a square), Kaldi fbank audio features
of a 30 s window (cast to bfloat16, as the official code does).

Unlike the official ids (one negative id per medium), the batch's `input_ids` hold one placeholder id per
encoder output, so that every video / audio token is one LLM position: video tokens, then (audio with video)
audio tokens, in place of the tag. The placeholder ids are the first rows of the embedding matrix past the
tokenizer (the checkpoint has unused rows there); their embeddings are replaced by the encoder features.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from hooked_av.families.chat import to_pil
from hooked_av.families.videollama2.beats import BEATs, BEATsConfig
from hooked_av.families.videollama2.fbank import kaldi_fbank
from hooked_av.families.videollama2.modeling import read_json, vision_tower_folder
from hooked_av.families.videollama2.stc import STCConnector
from hooked_av.model.errors import InputError
from hooked_av.model.modality import Modality

SAMPLE_RATE = 16000
WINDOW_SECONDS = 30  # the audio is always one zero-padded 30 s window
CLIP_SECONDS, CLIPS_PER_VIDEO = 2, 8  # process_audio_from_video: 8 windows of 2 s, concatenated
MEL_BINS = 128
# the official tag of each medium (audio with video uses the video tag)
MODAL_TAGS = {Modality.VIDEO: "<video>", Modality.AUDIO: "<audio>", Modality.IMAGE: "<image>"}


def uniform_frame_indices(n_frames: int, num: int) -> list[int]:
    """The official `frame_sample` (uniform): the middle of each of `num` segments, exact halves rounded up."""
    segment = (n_frames - 1) / num
    return [int(np.round(segment * (i + 0.5) + 1e-6)) for i in range(num)]


def av_clip_windows(n_samples: int) -> list[tuple[int, int]]:
    """Sample ranges of the 8 audio windows `process_audio_from_video` concatenates (pytorchvideo's
    ConstantClipsPerVideoSampler with exact fractions): start_k = k * max(d - 2, 0) / 8 s, 2 s long."""
    duration = n_samples / SAMPLE_RATE
    step = Fraction(Fraction(max(duration - CLIP_SECONDS, 0)), CLIPS_PER_VIDEO)
    return [(int(step * k * SAMPLE_RATE), int((step * k + CLIP_SECONDS) * SAMPLE_RATE)) for k in range(CLIPS_PER_VIDEO)]


def audio_features(wave: np.ndarray, with_video: bool) -> Tensor:
    """[frames, 128] bfloat16 fbank of the official 30 s window.

    Audio alone (`process_audio_file`): the waveform in float64, zero-padded (files longer than 30 s are cropped
    by the official code at a random start; here at the start). Audio of a video (`process_audio_from_video`):
    the 8 windows of 2 s concatenated in float32, zero-padded.
    """
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise InputError(f"audio must be a mono waveform (samples,), got shape {wave.shape}")
    n = WINDOW_SECONDS * SAMPLE_RATE
    if with_video:
        wave = np.concatenate([wave[a:b] for a, b in av_clip_windows(len(wave))]).astype(np.float32)
    else:
        wave = wave.astype(np.float64)
    padded = np.zeros(n, dtype=wave.dtype)
    padded[:min(len(wave), n)] = wave[:n]
    return kaldi_fbank(torch.from_numpy(padded) * 32768, num_mel_bins=MEL_BINS).to(torch.bfloat16)


class VideoLLaMA2Processor:
    def __init__(self, tokenizer: Any, image_size: int, image_mean: list[float], image_std: list[float],
                 rescale_factor: float, num_frames: int, patches_per_frame: int, beats_config: BEATsConfig):
        self.tokenizer = tokenizer
        self.image_size, self.image_mean, self.image_std = image_size, image_mean, image_std
        self.rescale_factor = rescale_factor
        self.num_frames = num_frames
        self.video_tokens = STCConnector.n_tokens(num_frames, patches_per_frame)
        self.audio_tokens = BEATs.n_tokens(beats_config, 1 + (WINDOW_SECONDS * SAMPLE_RATE - 400) // 160, MEL_BINS)
        first = len(tokenizer)
        self.placeholder_ids = {Modality.VIDEO: first, Modality.AUDIO: first + 1, Modality.IMAGE: first + 2}

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> VideoLLaMA2Processor:
        from transformers import Qwen2Tokenizer

        folder = Path(folder)
        config = read_json(folder / "config.json")
        vision = vision_tower_folder(folder, config.get("mm_vision_tower"))
        pre = read_json(vision / "preprocessor_config.json")
        vision_config = read_json(vision / "config.json")
        vision_config = vision_config.get("vision_config", vision_config)
        size = pre.get("size", {})
        side = size.get("height", size.get("shortest_edge")) if isinstance(size, dict) else int(size)
        patches = (vision_config.get("image_size", 224) // vision_config.get("patch_size", 16)) ** 2
        return cls(Qwen2Tokenizer.from_pretrained(str(folder), local_files_only=True), int(side),
                   pre.get("image_mean", [0.5] * 3), pre.get("image_std", [0.5] * 3),
                   pre.get("rescale_factor", 1 / 255), config.get("num_frames", 8), patches,
                   BEATsConfig.from_dict(config.get("beats_config")))

    # ---- text ---------------------------------------------------------------------------------------------
    def prompt(self, question: str, tag: str | None) -> str:
        """The official prompt: the modal tag and a newline before the question (only the newline for text)."""
        content = ("" if tag is None else tag) + "\n" + question
        return self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)

    def tokenize(self, prompt: str, tag: str | None, placeholders: list[int]) -> list[int]:
        """As the official `tokenizer_multimodal_token`: each chunk around the tag tokenised on its own; the tag
        becomes `placeholders` (one id per encoder output)."""
        chunks = prompt.split(tag) if tag is not None else [prompt]
        ids = self.tokenizer(chunks[0], add_special_tokens=False)["input_ids"]
        for chunk in chunks[1:]:
            ids += placeholders + self.tokenizer(chunk, add_special_tokens=False)["input_ids"]
        return ids

    # ---- media --------------------------------------------------------------------------------------------
    def frames(self, video: Any) -> list[Image.Image]:
        """The frames as given (the official code samples only files), padded with black frames to num_frames."""
        frames = [to_pil(f) for f in video]
        if not frames:
            raise InputError("the video holds no frames")
        frames += [Image.new("RGB", frames[0].size)] * max(self.num_frames - len(frames), 0)
        return frames

    def pixel_values(self, frames: list[Image.Image]) -> Tensor:
        """[frames, 3, S, S] float32: bicubic squash to S x S, rescale in float64, normalise in float32."""
        side = self.image_size
        u = np.stack([np.asarray(f.convert("RGB").resize((side, side), resample=Image.BICUBIC)) for f in frames])
        x = torch.from_numpy((u.astype(np.float64) * self.rescale_factor).astype(np.float32)).permute(0, 3, 1, 2)
        mean, std = (torch.tensor(v, dtype=torch.float32)[:, None, None] for v in (self.image_mean, self.image_std))
        return (x - mean) / std

    def __call__(self, questions: list[str], videos: list[Any], waves: list[Any], images: list[Any]) -> dict:
        """A left-padded batch. Per row: video (with its audio when a wave is given too), audio alone, an image
        (num_frames copies), or text."""
        rows, pixels, image_pixels, fbanks = [], [], [], []
        for question, video, wave, image in zip(questions, videos, waves, images):
            if image is not None and video is not None:
                raise InputError("VideoLLaMA2 takes one medium per prompt: a video (with or without its audio), "
                                 "an audio clip or an image")
            if video is not None:
                pixels.append(self.pixel_values(self.frames(video)))
                tag, slots = MODAL_TAGS[Modality.VIDEO], [self.placeholder_ids[Modality.VIDEO]] * self.video_tokens
                if wave is not None:
                    fbanks.append(audio_features(wave, with_video=True))
                    slots = slots + [self.placeholder_ids[Modality.AUDIO]] * self.audio_tokens
            elif image is not None:
                if wave is not None:
                    raise InputError("VideoLLaMA2's official path has no image + audio input")
                # one frame cannot pass the temporal Conv3d: the official code repeats it num_frames times
                image_pixels.append(self.pixel_values(self.frames([image] * self.num_frames)))
                tag, slots = MODAL_TAGS[Modality.IMAGE], [self.placeholder_ids[Modality.IMAGE]] * self.video_tokens
            elif wave is not None:
                fbanks.append(audio_features(wave, with_video=False))
                tag, slots = MODAL_TAGS[Modality.AUDIO], [self.placeholder_ids[Modality.AUDIO]] * self.audio_tokens
            else:
                tag, slots = None, []
            rows.append(self.tokenize(self.prompt(question, tag), tag, slots))
        length = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([[pad] * (length - len(r)) + r for r in rows]),
            "attention_mask": torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows]),
        }
        if pixels:
            batch["pixel_values_videos"] = torch.stack(pixels)
        if image_pixels:
            batch["pixel_values"] = torch.stack(image_pixels)
        if fbanks:
            batch["audio_fbank"] = torch.stack(fbanks)
        return batch
