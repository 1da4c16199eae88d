"""Typed errors: each names what is wrong and what to do about it."""

from __future__ import annotations


class HookedAVError(Exception):
    """Base class of every error raised by hooked_av."""


class UnknownHookError(HookedAVError, KeyError):
    """A hook name that is not a hook point of the model."""

    def __str__(self) -> str:  # KeyError would print the message inside quotes
        return str(self.args[0]) if self.args else ""


class LayerIndexError(HookedAVError, IndexError):
    """A layer index outside [0, n_layers)."""


class PlaceholderMismatchError(HookedAVError, ValueError):
    """The number of placeholder tokens does not match the number of encoder features."""


class MissingProcessorError(HookedAVError, RuntimeError):
    """An operation needs the HF processor, and the model was loaded without one."""


class UnsupportedCheckpointError(HookedAVError, ValueError):
    """A checkpoint folder or HF model that no file in model_configs/ describes, or whose weights do not fit."""


class ModelConfigError(HookedAVError, ValueError):
    """A malformed file in model_configs/."""


class MissingMediaError(HookedAVError, FileNotFoundError):
    """A media file that does not exist or cannot be decoded."""


class InputError(HookedAVError, ValueError):
    """A model input that is missing, has the wrong shape, or contradicts another input."""


class EmptySelectionError(InputError):
    """A selection of positions (a knockout's sources or targets) that selects no position of the batch."""


class MediaKindError(InputError):
    """A media file given as the wrong kind of input: a still image as video=, a video as image=."""


def check_layer(layer: int, n_layers: int) -> int:
    """Return `layer` as a non-negative index, allowing negative indices as Python does."""
    if not -n_layers <= layer < n_layers:
        raise LayerIndexError(f"layer {layer} is out of range: this model has {n_layers} layers "
                              f"(valid: 0..{n_layers - 1}, or -{n_layers}..-1)")
    return layer % n_layers


class MissingDependencyError(HookedAVError, ImportError):
    """An optional dependency (e.g. vllm) that a chosen backend or engine needs and that is not installed."""
