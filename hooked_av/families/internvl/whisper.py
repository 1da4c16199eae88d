"""InternOmni's audio encoder: transformers' Whisper encoder modules with the official forward.

The official `AudioWhisperModel` differs from stock Whisper (transformers' `WhisperEncoder.forward` attends over the
whole zero-padded 30 s window): it cuts the log-mel frames to the longest audio's real length before the
convolutions, adds positions `[:T]`, zeroes the padded frames of shorter audios and masks them as keys, and pools
pairs of frames *after* the final LayerNorm. Only that forward is written here; the layers are transformers'.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from hooked_av.families.whisper_frames import encoder_lengths

SAMPLING_RATE = 16000
HOP_LENGTH = 160
MAX_SAMPLES = 30 * SAMPLING_RATE  # the official processor cuts audio at 30 s


def audio_token_counts(num_samples: int) -> tuple[int, int]:
    """(encoder frames after the stride-2 convolution, LLM tokens) of an audio of `num_samples` at 16 kHz, as
    the official `WhisperProcessor` counts them (from the sample count, not from the features)."""
    frames = int(encoder_lengths(torch.tensor(min(num_samples, MAX_SAMPLES) // HOP_LENGTH)))
    return frames, (frames - 2) // 2 + 1


class OfficialWhisperEncoder(WhisperEncoder):
    """WhisperEncoder (same parameters) with InternOmni's forward: real length, padding mask, LN, 2x pooling."""

    def forward(self, input_features: Float[Tensor, "audios mels frames"],
                frames_after_cnn: Int[Tensor, "audios"]) -> Float[Tensor, "audios pooled d_model"]:
        length = int(frames_after_cnn.max())
        x = input_features[..., : 2 * length].to(self.conv1.weight.dtype)
        x = F.gelu(self.conv2(F.gelu(self.conv1(x)))).transpose(1, 2)
        x = x + self.embed_positions.weight[: x.shape[1]]
        padded = torch.arange(length, device=x.device)[None, :] >= frames_after_cnn.to(x.device)[:, None]
        x = x.masked_fill(padded[..., None], 0.0)
        mask = torch.zeros(padded.shape, dtype=x.dtype, device=x.device).masked_fill(padded, float("-inf"))
        for layer in self.layers:
            x = layer(x, mask[:, None, None, :])
        x = self.layer_norm(x)
        return F.avg_pool1d(x.transpose(1, 2), 2, 2).transpose(1, 2)


class AudioModel(nn.Module):
    """The official `audio_model` (it holds the encoder under `encoder.`)."""

    def __init__(self, config: WhisperConfig):
        super().__init__()
        self.encoder = OfficialWhisperEncoder(config)

    def forward(self, input_features: Tensor, frames_after_cnn: Tensor) -> Tensor:
        return self.encoder(input_features, frames_after_cnn)
