"""The offline vLLM backend without vLLM: a clear error when it is missing, and the calls it would make."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest

from hooked_av.eval.backends import JudgeBackend, VLLMBackend
from hooked_av.eval.errors import MissingDependencyError
from hooked_av.eval.rubric import JUDGEMENT_SCHEMA


def test_missing_vllm_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail even where vLLM is installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'hooked_av\[vllm\]'.*--backend openai"):
        VLLMBackend("Qwen/Qwen3-32B")


@dataclass
class Recorder:
    llm_kwargs: dict = field(default_factory=dict)
    sampling_kwargs: dict = field(default_factory=dict)
    chat_calls: list = field(default_factory=list)


def fake_vllm(monkeypatch, structured_name: str) -> Recorder:
    """A stand-in vllm package exposing either the current or the older structured-output class."""
    rec = Recorder()

    class LLM:
        def __init__(self, **kwargs):
            rec.llm_kwargs = kwargs

        def chat(self, messages, sampling_params, **kwargs):
            rec.chat_calls.append((messages, sampling_params, kwargs))
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f"answer {i}")])
                    for i in range(len(messages))]

    def sampling_params(**kwargs):
        rec.sampling_kwargs = kwargs
        return "params"

    sampling_module = types.ModuleType("vllm.sampling_params")
    setattr(sampling_module, structured_name, lambda json: ("constraint", structured_name, json))
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams, module.sampling_params = LLM, sampling_params, sampling_module
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling_module)
    return rec


def test_structured_outputs_and_chat_calls(monkeypatch):
    rec = fake_vllm(monkeypatch, "StructuredOutputsParams")
    backend = VLLMBackend("Qwen/Qwen3-32B", max_tokens=99, chat_template_kwargs={"enable_thinking": False},
                          tensor_parallel_size=2)
    assert isinstance(backend, JudgeBackend) and backend.name == "Qwen/Qwen3-32B"
    assert backend.decoding == "json_schema"
    assert rec.llm_kwargs == {"model": "Qwen/Qwen3-32B", "tensor_parallel_size": 2}
    assert rec.sampling_kwargs == {"temperature": 0.0, "max_tokens": 99,
                                   "structured_outputs": ("constraint", "StructuredOutputsParams", JUDGEMENT_SCHEMA)}
    assert backend.complete(["p1", "p2"]) == ["answer 0", "answer 1"]
    messages, params, kwargs = rec.chat_calls[0]
    assert messages == [[{"role": "user", "content": "p1"}], [{"role": "user", "content": "p2"}]]
    assert params == "params" and kwargs["chat_template_kwargs"] == {"enable_thinking": False}


def test_older_vllm_uses_guided_decoding(monkeypatch):
    rec = fake_vllm(monkeypatch, "GuidedDecodingParams")
    VLLMBackend("m")
    assert rec.sampling_kwargs["guided_decoding"] == ("constraint", "GuidedDecodingParams", JUDGEMENT_SCHEMA)
