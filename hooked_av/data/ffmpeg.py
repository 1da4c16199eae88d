"""FFmpeg, run as an argument list (never through a shell): swapping a clip's sound track for another clip's."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from hooked_av.model.errors import HookedAVError, MissingMediaError


class FFmpegError(HookedAVError, RuntimeError):
    """FFmpeg is not available, or a command failed (the message holds the end of its stderr)."""


def ffmpeg_exe() -> str:
    """A system `ffmpeg` on PATH, else the binary shipped by the imageio-ffmpeg package."""
    system = shutil.which("ffmpeg")
    if system:
        return system
    try:
        import imageio_ffmpeg
    except ImportError as err:
        raise FFmpegError("no ffmpeg on PATH and imageio-ffmpeg is not installed: install ffmpeg or "
                          "`pip install hooked_av[data]`") from err
    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(args: list[str], timeout_s: float = 600.0) -> None:
    """Run `ffmpeg -hide_banner -nostdin -y <args>`; FFmpegError with the stderr tail when it fails."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as err:
        raise FFmpegError(f"ffmpeg ran longer than {timeout_s:.0f} s: {' '.join(cmd)}") from err
    if result.returncode != 0:
        raise FFmpegError(f"ffmpeg failed (exit {result.returncode}): {' '.join(cmd)}\n{result.stderr[-2000:]}")


def video_duration(path: str | Path) -> float:
    """Seconds of a file's first video stream (the container's duration when the stream does not say)."""
    from hooked_av.data.probe import probe_media

    info = probe_media(path, decode=False)
    if not info.has_video:
        raise MissingMediaError(f"{path} has no video stream")
    if info.duration is None:
        raise MissingMediaError(f"{path}: the video stream does not state its duration")
    return info.duration


def swap_audio(video: str | Path, audio: str | Path, out: str | Path, audio_bitrate: str = "128k") -> Path:
    """Write `out`: the video stream of `video` copied bit for bit, the first audio stream of `audio` re-encoded to
    AAC and cut or padded with silence to the video's duration (so a longer or shorter sound never changes the clip
    length the model sees). Written to a temporary name first: a killed run leaves no half-written clip."""
    video, audio, out = Path(video), Path(audio), Path(out)
    if not audio.is_file():
        raise MissingMediaError(f"media file not found: {audio}")
    duration = video_duration(video)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    run_ffmpeg(["-i", str(video), "-i", str(audio),
                "-map", "0:v:0", "-map", "1:a:0",
                "-c:v", "copy",
                "-c:a", "aac", "-b:a", audio_bitrate, "-af", "apad",  # apad: pad a short sound with silence ...
                "-t", f"{duration:.6f}",                               # ... and -t cuts everything at the video end
                "-movflags", "+faststart", str(tmp)])
    os.replace(tmp, out)
    return out
