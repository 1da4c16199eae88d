"""hooked_av: mechanistic interpretability of audio-visual LLMs, TransformerLens style."""

from hooked_av.model.activation_cache import AVActivationCache
from hooked_av.model.errors import (HookedAVError, InputError, LayerIndexError, MediaKindError, MissingMediaError,
                                    MissingProcessorError, ModelConfigError, PlaceholderMismatchError,
                                    UnknownHookError, UnsupportedCheckpointError)
from hooked_av.model.hooked_av_model import GenerationOutput, HookedAVModel
from hooked_av.model.modality import Modality, ModalityMap

__all__ = ["AVActivationCache", "GenerationOutput", "HookedAVError", "HookedAVModel", "InputError",
           "LayerIndexError", "MediaKindError", "MissingMediaError", "MissingProcessorError", "Modality", "ModalityMap",
           "ModelConfigError", "PlaceholderMismatchError", "UnknownHookError", "UnsupportedCheckpointError"]
__version__ = "0.1.0"
