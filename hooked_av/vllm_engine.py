"""What the two vLLM users share (the judge's VLLMBackend, the captioner's VLLMCaptioner): importing vLLM with
a clear error where it is missing, and greedy sampling parameters."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from hooked_av.model.errors import MissingDependencyError


def import_vllm(user: str, alternative: str) -> ModuleType:
    """The vllm module; `user` needs it, `alternative` says what to do without it."""
    try:
        import vllm
        import vllm.sampling_params  # noqa: F401 (structured-output parameter classes live there)
    except ImportError as e:
        raise MissingDependencyError(f"{user} needs vLLM (a CUDA machine): pip install 'hooked_av[vllm]', "
                                     f"{alternative}") from e
    return vllm


def greedy_params(vllm: ModuleType, max_tokens: int, **constraints: Any) -> Any:
    """Temperature 0: reproducible answers (the judge's cache) and the hooked model's decoding (captions)."""
    return vllm.SamplingParams(temperature=0.0, max_tokens=max_tokens, **constraints)
