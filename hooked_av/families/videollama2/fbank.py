"""Kaldi-compatible log-mel filter bank, as torchaudio's `compliance.kaldi.fbank` computes it (torchaudio has no
build for the torch this library runs on, and the official VideoLLaMA2 audio features are exactly that call).

Same operations in the same order and dtype as torchaudio 2.2's implementation, for the options the official code
uses (snip edges, no dither, DC removal, pre-emphasis 0.97, povey window, power spectrum, no VTLN, natural log
with the float32-epsilon floor), so the result equals it to the last bit in float32 and float64.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor
from torch.nn import functional as F


def mel_banks(num_bins: int, padded_window: int, sample_rate: float, low_freq: float = 20.0,
              high_freq: float = 0.0) -> Float[Tensor, "bins fft_bins"]:
    """Triangular filters, equally spaced on Kaldi's mel scale (float32, as torchaudio builds them)."""
    num_fft_bins = padded_window // 2
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    fft_bin_width = sample_rate / padded_window
    mel_low, mel_high = (1127.0 * math.log(1.0 + f / 700.0) for f in (low_freq, high_freq))
    delta = (mel_high - mel_low) / (num_bins + 1)
    index = torch.arange(num_bins).unsqueeze(1)
    left, center, right = (mel_low + (index + k) * delta for k in (0, 1, 2))
    mel = 1127.0 * (1.0 + fft_bin_width * torch.arange(num_fft_bins) / 700.0).log()
    mel = mel.unsqueeze(0)
    up, down = (mel - left) / (center - left), (right - mel) / (right - center)
    return torch.max(torch.zeros(1), torch.min(up, down))


def kaldi_fbank(wave: Float[Tensor, "samples"], num_mel_bins: int = 128, sample_rate: int = 16000,
                frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0,
                preemphasis: float = 0.97) -> Float[Tensor, "frames mel"]:
    """Log-mel fbank of a mono waveform (already scaled to 16-bit range), in the waveform's dtype."""
    dtype = wave.dtype
    size = int(sample_rate * frame_length_ms * 0.001)
    shift = int(sample_rate * frame_shift_ms * 0.001)
    padded = 1 << (size - 1).bit_length()
    n_frames = 1 + (wave.numel() - size) // shift
    frames = wave.as_strided((n_frames, size), (shift * wave.stride(0), wave.stride(0)))
    frames = frames - frames.mean(dim=1).unsqueeze(1)
    previous = F.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)
    frames = frames - preemphasis * previous[:, :-1]
    window = torch.hann_window(size, periodic=False, dtype=dtype).pow(0.85).unsqueeze(0)
    frames = F.pad((frames * window).unsqueeze(0), (0, padded - size), mode="constant", value=0).squeeze(0)
    power = torch.fft.rfft(frames).abs().pow(2.0)
    banks = F.pad(mel_banks(num_mel_bins, padded, sample_rate).to(dtype), (0, 1), mode="constant", value=0)
    energies = torch.mm(power, banks.T)
    return torch.max(energies, torch.tensor(torch.finfo(torch.float).eps).to(dtype)).log()
