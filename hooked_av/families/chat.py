"""Turning a prompt and media into the chat messages and per-sample media lists a processor expects."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hooked_av.data.media import load_audio, load_image, load_video
from hooked_av.model.errors import InputError

MediaPath = (str, Path)


@dataclass
class Sample:
    prompt: str
    video: np.ndarray | None = None
    audio: np.ndarray | None = None
    image: np.ndarray | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)


def to_pil(image: Any) -> Image.Image:
    """A frame or image as the PIL image the official processors take (uint8 arrays are converted)."""
    return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))


def per_sample(value: Any, n: int, name: str) -> list[Any]:
    if n == 1:
        return [value]
    if value is None:
        return [None] * n
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise InputError(f"{name} must be a list with one entry (or None) per prompt: {n} prompts given")
    return list(value)


def build_samples(prompt: str | list[str], video: Any, audio: Any, image: Any, *, fps: float, sampling_rate: int,
                  use_audio_in_video: bool, system_prompt: str | None) -> list[Sample]:
    """Load media (arrays or files) and write one chat conversation per prompt.

    With `use_audio_in_video`, the conversation holds only the video item: the processor interleaves the
    video's sound track into the video block. The track is the file's own when the video is a file (then
    `audio` must be None), or `audio` when the video is given as frames.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    videos, audios, images = (per_sample(v, len(prompts), n) for v, n in
                              ((video, "video"), (audio, "audio"), (image, "image")))
    samples = []
    for text, v, a, im in zip(prompts, videos, audios, images):
        if use_audio_in_video:
            if v is None:
                raise InputError("use_audio_in_video=True needs a video")
            if isinstance(v, MediaPath) and a is not None:
                raise InputError(f"use_audio_in_video=True reads the sound from the video file's own sound track "
                                 f"({v}), so audio= would be a second sound and be dropped: pass audio= without "
                                 "use_audio_in_video (a separate audio input), or omit audio=")
            if a is None:
                if not isinstance(v, MediaPath):
                    raise InputError("use_audio_in_video=True with video frames needs the sound track as audio=...;"
                                     " or pass the video as a file path so its audio stream is read")
                a = load_audio(v, sampling_rate)
        sample = Sample(
            prompt=text,
            video=load_video(v, fps) if isinstance(v, MediaPath) else v,
            audio=load_audio(a, sampling_rate) if isinstance(a, MediaPath) else a,
            image=load_image(im) if isinstance(im, MediaPath) else im)
        content: list[dict[str, Any]] = []
        if sample.image is not None:
            content.append({"type": "image", "image": sample.image})
        if sample.video is not None:
            content.append({"type": "video", "video": sample.video})
        if sample.audio is not None and not use_audio_in_video:
            content.append({"type": "audio", "audio": sample.audio})
        content.append({"type": "text", "text": text})
        sample.messages = ([{"role": "system", "content": system_prompt}] if system_prompt is not None else []) + [
            {"role": "user", "content": content}]
        samples.append(sample)
    return samples
