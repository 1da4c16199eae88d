"""Captions without hooks on vLLM: the hooked model's chat template and media, vLLM's batching and kernels.

The factual / counterfactual baselines and the captions the judge scores need no hook, so a study that outgrows
one GPU can write them with an offline vllm.LLM (tensor and data parallel), into the same resumable JSONL as
`caption_manifest` with the hooked model. The prompt text is the family processor's chat template applied to the
very messages the hooked adapter builds (hooked_av.families.chat.build_samples); the media are the same decoded
frames (at the run's fps) and 16 kHz audio, given to vLLM as multi_modal_data, so vLLM's copy of the HF
processor computes the same patches and features. Decoding is greedy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hooked_av
from hooked_av.data.caption_run import CaptionRequest
from hooked_av.data.checkpoint import CheckpointInfo, files_sha256
from hooked_av.families.chat import build_samples
from hooked_av.model.errors import InputError, MissingProcessorError
from hooked_av.model.family_spec import FamilySpec, family_for_config
from hooked_av.model.loading import load_processor, read_config, safetensors_files
from hooked_av.vllm_engine import greedy_params, import_vllm

# families (hooked_av family names) whose checkpoints vLLM serves: the Qwen2.5-Omni thinker, Qwen2.5-VL
VLLM_FAMILIES = frozenset({"qwen2_5_omni", "qwen2_5_vl"})
AUDIO_RATE = 16000  # the rate load_media decodes at, which both families' feature extractors expect


class UnsupportedEngineError(InputError):
    """A checkpoint whose family vLLM does not serve (the caption command falls back to the hooked model)."""


def vllm_family(checkpoint: str | Path) -> FamilySpec:
    """The family of a checkpoint folder, when vLLM serves it; else UnsupportedEngineError."""
    folder = Path(checkpoint)
    if not folder.is_dir():
        raise UnsupportedEngineError(f"{str(checkpoint)!r} is not a checkpoint folder vLLM could load")
    spec = family_for_config(read_config(folder))
    if spec.name not in VLLM_FAMILIES:
        raise UnsupportedEngineError(f"vLLM does not serve the {spec.name} family here (only "
                                     f"{', '.join(sorted(VLLM_FAMILIES))})")
    return spec


def checkpoint_dtype(config: dict[str, Any]) -> str:
    """The dtype the checkpoint's config declares (what vLLM's dtype="auto" serves)."""
    for section in (config, config.get("thinker_config") or {}, config.get("text_config") or {}):
        dtype = section.get("torch_dtype") or section.get("dtype")
        if isinstance(dtype, str):
            return dtype
    return "auto"


class VLLMCaptioner:
    """A CaptionEngine (hooked_av.data.caption_run) on an offline vllm.LLM.

    tensor_parallel_size and data_parallel_size go to vllm.LLM as they are, and so do further keyword arguments
    (e.g. max_model_len, gpu_memory_utilization). batch_samples samples' requests go to one generate call:
    vLLM schedules them together, and their rows are written when it returns. The rows' model_hash is the sha256
    of the checkpoint's safetensors files and the served dtype (files_sha256): this process never holds the
    weights, and a vLLM caption file is never resumed by the hooked model (the engine column differs).
    """

    name = "vllm"

    def __init__(self, checkpoint: str | Path, *, dtype: str | None = None, tensor_parallel_size: int = 1,
                 data_parallel_size: int = 1, batch_samples: int = 64, **llm_kwargs: Any):
        folder = Path(checkpoint)
        spec = vllm_family(folder)
        vllm = import_vllm("captioning with --engine vllm", "or caption with the hooked model (--engine hooked)")
        self.processor = load_processor(folder, spec)
        if self.processor is None:
            raise MissingProcessorError(f"{folder} has no processor files: vLLM captions need its chat template")
        self.has_audio = "audio" in spec.placeholders
        self.batch_samples = batch_samples
        dtype = dtype or checkpoint_dtype(read_config(folder))
        self.info = CheckpointInfo(model=str(checkpoint), model_hash=files_sha256(safetensors_files(folder), dtype),
                                   family=spec.name, dtype=dtype, hooked_av_version=hooked_av.__version__)
        parallel = {"tensor_parallel_size": tensor_parallel_size}
        if data_parallel_size > 1:
            parallel["data_parallel_size"] = data_parallel_size
        self._vllm = vllm
        limits = {"video": 1, **({"audio": 1} if self.has_audio else {})}  # one clip (and its sound) per prompt
        self.llm = vllm.LLM(model=str(folder), dtype=dtype, seed=0, trust_remote_code=False,
                            limit_mm_per_prompt=limits, **parallel, **llm_kwargs)

    def prompt(self, request: CaptionRequest) -> dict[str, Any]:
        """vLLM's input for one request: the chat-templated text, the media, the processor's settings."""
        [sample] = build_samples(request.prompt, request.frames, request.audio, None, fps=request.fps,
                                 sampling_rate=AUDIO_RATE, use_audio_in_video=request.use_audio_in_video,
                                 system_prompt=None)
        text = self.processor.apply_chat_template(sample.messages, add_generation_prompt=True, tokenize=False)
        media: dict[str, Any] = {"video": request.frames}
        processor_kwargs: dict[str, Any] = {"fps": request.fps}
        if request.audio is not None:
            media["audio"] = (request.audio, AUDIO_RATE)
            processor_kwargs["use_audio_in_video"] = request.use_audio_in_video
        return {"prompt": text, "multi_modal_data": media, "mm_processor_kwargs": processor_kwargs}

    def captions(self, requests: list[CaptionRequest], max_new_tokens: int) -> list[str]:
        outputs = self.llm.generate([self.prompt(r) for r in requests], greedy_params(self._vllm, max_new_tokens),
                                    use_tqdm=False)
        return [out.outputs[0].text for out in outputs]
