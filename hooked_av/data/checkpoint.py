"""Which checkpoint wrote a row: its name, a content hash of its weights, dtype and library version.

Caption rows carry this record so that a caption file never mixes two checkpoints (a resume with other weights
is refused) and score files keep two checkpoints' scores apart (the score key holds the weights hash).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import hooked_av


@dataclass(frozen=True)
class CheckpointInfo:
    model: str              # what the user named: the checkpoint folder, or a description of an in-memory model
    model_hash: str         # sha256 of the weights as loaded (see weights_sha256)
    family: str
    dtype: str              # of the decoder's weights, e.g. "bfloat16"
    hooked_av_version: str


def weights_sha256(module: nn.Module) -> str:
    """sha256 over every state-dict tensor in name order: its name, dtype, shape and bytes.

    The hash is of the weights as they sit in memory, so the same checkpoint loaded in another dtype (which
    greedy decoding can tell apart) hashes differently, and a fine-tune with the base model's config does too.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        # as raw bytes: numpy has no bfloat16, and a byte view is exact for every dtype
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).cpu().numpy())
    return digest.hexdigest()


def files_sha256(paths: list[Path], dtype: str) -> str:
    """sha256 over weight files (name and bytes, streamed) and the dtype they are served in: the hash of a
    checkpoint that another engine (vLLM) loads, so this process never holds its weights."""
    digest = hashlib.sha256(f"dtype|{dtype}\n".encode())
    for path in paths:
        digest.update(f"{path.name}\n".encode())
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def describe_checkpoint(model, name: str | None = None) -> CheckpointInfo:
    """The record of a HookedAVModel; `name` defaults to the HF config's name_or_path, else the family."""
    hf_model = model.adapter.hf_model
    name = name or getattr(hf_model.config, "name_or_path", "") or f"{model.cfg.family} (in memory)"
    return CheckpointInfo(model=str(name), model_hash=weights_sha256(hf_model), family=model.cfg.family,
                          dtype=str(model.W_E.dtype).removeprefix("torch."),
                          hooked_av_version=hooked_av.__version__)
