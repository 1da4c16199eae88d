"""Decoding media files into model inputs with PyAV: frames sampled at a chosen fps, audio as 16 kHz mono."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hooked_av.model.errors import MediaKindError, MissingMediaError


def _open(path: str | Path):
    import av

    path = Path(path)
    if not path.is_file():
        raise MissingMediaError(f"media file not found: {path}")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as err:
        raise MissingMediaError(f"cannot decode {path}: {err}") from err


def is_still_image(container) -> bool:
    """FFmpeg reads single images with its image demuxers ("png_pipe", "jpeg_pipe", ..., "image2")."""
    name = container.format.name
    return name == "image2" or name.endswith("_pipe")


def load_video(path: str | Path, fps: float = 2.0, max_frames: int | None = None) -> np.ndarray:
    """RGB frames (T, H, W, 3) uint8, one per 1/fps seconds (the frame shown at each sampling time)."""
    import av

    with _open(path) as container:
        if not container.streams.video:
            raise MissingMediaError(f"{path} has no video stream")
        if is_still_image(container):
            raise MediaKindError(f"{path} is a still image ({container.format.name}), not a video: pass it as "
                                 "image=")
        stream = container.streams.video[0]
        frames, next_time = [], 0.0
        try:
            for frame in container.decode(stream):
                t = float(frame.time if frame.time is not None else 0.0)
                if t + 1e-6 < next_time:
                    continue
                frames.append(frame.to_ndarray(format="rgb24"))
                next_time = len(frames) / fps
                if max_frames is not None and len(frames) >= max_frames:
                    break
        except av.error.FFmpegError as err:
            raise MissingMediaError(f"cannot decode the video stream of {path}: {err}") from err
    if not frames:
        raise MissingMediaError(f"{path}: the video stream holds no frames")
    return np.stack(frames)


def load_audio(source: str | Path | np.ndarray, sampling_rate: int = 16000) -> np.ndarray:
    """Mono float32 waveform at `sampling_rate` from an audio or video file (arrays pass through), cut at the
    duration the audio stream declares."""
    if isinstance(source, np.ndarray):
        return source.astype(np.float32, copy=False)
    import av

    with _open(source) as container:
        if not container.streams.audio:
            raise MissingMediaError(f"{source} has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sampling_rate)
        declared = (None if stream.duration is None or stream.time_base is None
                    else round(float(stream.duration * stream.time_base) * sampling_rate))
        chunks = []
        try:
            for frame in container.decode(stream):
                chunks.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(frame))
            chunks.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(None))
        except av.error.FFmpegError as err:
            raise MissingMediaError(f"cannot decode the audio stream of {source}: {err}") from err
    if not chunks:
        raise MissingMediaError(f"{source}: the audio stream holds no samples")
    # An AAC stream decodes to whole 1024-sample frames: the encoder's padding after the last sample would
    # lengthen the clip (and change the number of audio tokens) unless cut at the duration the stream declares.
    return np.concatenate(chunks)[:declared].astype(np.float32)


def load_image(path: str | Path) -> np.ndarray:
    """RGB image (H, W, 3) uint8 (a GIF gives its first frame)."""
    with _open(path) as container:
        if not container.streams.video:
            raise MissingMediaError(f"{path} is not an image")
        if not is_still_image(container) and container.format.name != "gif":
            raise MediaKindError(f"{path} is a video ({container.format.name}), not an image: pass it as video=, "
                                 "or save the frame you want as an image")
        for frame in container.decode(container.streams.video[0]):
            return frame.to_ndarray(format="rgb24")
    raise MissingMediaError(f"{path}: no image could be decoded")
