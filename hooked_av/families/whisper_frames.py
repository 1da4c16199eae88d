"""Frame arithmetic of Whisper-style audio encoders, shared by the families that use one (MiniCPM-o, InternOmni)."""

from __future__ import annotations

from torch import Tensor


def encoder_lengths(mel_frames: Tensor) -> Tensor:
    """Encoder frames after the stride-2 convolution."""
    return (mel_frames - 1) // 2 + 1
