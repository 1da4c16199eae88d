"""Captioning on vLLM without vLLM: a stand-in engine records the calls (prompts, media, sampling parameters,
engine arguments) that VLLMCaptioner makes, and the rows it writes go through the same resumable JSONL path as the
hooked model's."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import types
from dataclasses import dataclass, field

import numpy as np
import pytest

from hooked_av.cli import main
from hooked_av.data.caption_run import CaptionRow, caption_manifest
from hooked_av.data.checkpoint import files_sha256
from hooked_av.data.manifest import ManifestRow, load_sample, write_manifest
from hooked_av.data.vllm_caption import UnsupportedEngineError, VLLMCaptioner, vllm_family
from hooked_av.model.errors import InputError, MissingDependencyError
from hooked_av.model.loading import safetensors_files
from tests.test_media import write_clip

PROMPTS = ("Describe what you see and hear.", "Describe what you hear.")
TOKENS = 3


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing in the run may catch it."""


@dataclass
class Recorder:
    llm_kwargs: dict = field(default_factory=dict)
    sampling_kwargs: dict = field(default_factory=dict)
    calls: list = field(default_factory=list)  # the prompts of each generate call
    die_on_call: int | None = None


def fake_caption(prompt: dict) -> str:
    """A caption that depends on the text and on the media it was given, as a model's would."""
    digest = hashlib.sha256(prompt["prompt"].encode())
    for value in prompt["multi_modal_data"].values():
        digest.update(np.ascontiguousarray(value[0] if isinstance(value, tuple) else value).tobytes())
    return f"caption {digest.hexdigest()[:8]}"


@pytest.fixture
def fake_vllm(monkeypatch) -> Recorder:
    rec = Recorder()

    class LLM:
        def __init__(self, **kwargs):
            rec.llm_kwargs = kwargs

        def generate(self, prompts, sampling_params, use_tqdm=True):
            assert sampling_params == "greedy params" and use_tqdm is False
            rec.calls.append(prompts)
            if len(rec.calls) == rec.die_on_call:
                raise Killed
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=fake_caption(p))]) for p in prompts]

    def sampling_params(**kwargs):
        rec.sampling_kwargs = kwargs
        return "greedy params"

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = LLM, sampling_params
    module.sampling_params = types.ModuleType("vllm.sampling_params")
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", module.sampling_params)
    return rec


@pytest.fixture(scope="module")
def checkpoint(omni, tmp_path_factory):
    """The session's tiny Omni thinker saved in the HF layout (weights + processor)."""
    hf_model, processor, _ = omni
    folder = tmp_path_factory.mktemp("omni_ckpt")
    hf_model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    write_clip(folder / "a.mp4", seconds=1.0)
    write_clip(folder / "b.mp4", seconds=1.0, size=(48, 64))
    return [ManifestRow("a", folder / "a.mp4", "video", ["a tone"]),
            ManifestRow("b", folder / "b.mp4", folder / "a.mp4", ["a tone"], counterfactual=True,
                        video_source="b", audio_source="a", similarity=0.1)]


def hooked_processor_texts(model, monkeypatch, row: ManifestRow, prompt: str, use_audio_in_video: bool) -> list:
    """The chat-templated texts that the hooked model hands its processor for this sample and prompt."""
    seen = []
    processor_call = type(model.adapter.processor).__call__

    def spy(self, *args, **kwargs):
        seen.extend(kwargs["text"])
        return processor_call(self, *args, **kwargs)

    monkeypatch.setattr(type(model.adapter.processor), "__call__", spy)
    sample = load_sample(row, fps=2.0)
    model.prepare_inputs(prompt, video=sample.frames, audio=sample.audio, fps=2.0,
                         use_audio_in_video=use_audio_in_video)
    monkeypatch.undo()
    return seen


def test_calls_carry_the_hooked_prompt_text_media_and_greedy_params(fake_vllm, checkpoint, rows, omni, tmp_path,
                                                                    monkeypatch):
    engine = VLLMCaptioner(checkpoint, tensor_parallel_size=2, data_parallel_size=4)
    assert fake_vllm.llm_kwargs == {"model": str(checkpoint), "dtype": "float32", "seed": 0,
                                    "trust_remote_code": False, "limit_mm_per_prompt": {"video": 1, "audio": 1},
                                    "tensor_parallel_size": 2, "data_parallel_size": 4}
    out = tmp_path / "captions.jsonl"
    report = caption_manifest(engine, rows, out, prompts=PROMPTS, max_new_tokens=TOKENS)
    assert (report.written, report.already_done, report.errors) == (4, 0, [])
    assert fake_vllm.sampling_kwargs == {"temperature": 0.0, "max_tokens": TOKENS}
    [sent] = fake_vllm.calls  # both samples' requests in one batch
    assert len(sent) == 4
    for i, (row, use_audio_in_video) in enumerate([(rows[0], True)] * 2 + [(rows[1], False)] * 2):
        prompt = PROMPTS[i % 2]
        assert [sent[i]["prompt"]] == hooked_processor_texts(omni[2], monkeypatch, row, prompt, use_audio_in_video)
        sample = load_sample(row, fps=2.0)
        video, (audio, rate) = sent[i]["multi_modal_data"]["video"], sent[i]["multi_modal_data"]["audio"]
        assert np.array_equal(video, sample.frames) and np.array_equal(audio, sample.audio) and rate == 16000
        assert sent[i]["mm_processor_kwargs"] == {"fps": 2.0, "use_audio_in_video": use_audio_in_video}
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [set(r) for r in written] == [{f.name for f in dataclasses.fields(CaptionRow)}] * 4
    assert [(r["sample_id"], r["prompt"], r["caption"]) for r in written] == [
        (s, p, fake_caption(q)) for (s, p), q in zip([(s, p) for s in "ab" for p in PROMPTS], sent)]
    assert {(r["engine"], r["family"], r["dtype"], r["model"], r["model_hash"]) for r in written} == {
        ("vllm", "qwen2_5_omni", "float32", str(checkpoint), files_sha256(safetensors_files(checkpoint), "float32"))}
    assert [r["counterfactual"] for r in written] == [False, False, True, True]


def test_resume_after_a_kill_sends_only_the_missing_requests(fake_vllm, checkpoint, rows, tmp_path):
    reference = tmp_path / "reference.jsonl"
    caption_manifest(VLLMCaptioner(checkpoint), rows, reference, prompts=PROMPTS, max_new_tokens=TOKENS)
    fake_vllm.calls.clear()
    out = tmp_path / "captions.jsonl"
    engine = VLLMCaptioner(checkpoint, batch_samples=1)
    fake_vllm.die_on_call = 2  # sample b's batch
    with pytest.raises(Killed):
        caption_manifest(engine, rows, out, prompts=PROMPTS, max_new_tokens=TOKENS)
    assert [json.loads(line)["sample_id"] for line in out.read_text().splitlines()] == ["a", "a"]
    fake_vllm.die_on_call, fake_vllm.calls = None, []
    report = caption_manifest(engine, rows, out, prompts=PROMPTS, max_new_tokens=TOKENS)
    assert (report.written, report.already_done) == (2, 2)
    assert [len(call) for call in fake_vllm.calls] == [2]  # only sample b's two prompts were generated again
    assert out.read_text() == reference.read_text()


def test_a_hooked_caption_file_is_not_resumed_on_vllm(fake_vllm, checkpoint, rows, omni, tmp_path):
    out = tmp_path / "captions.jsonl"
    caption_manifest(omni[2], rows[:1], out, prompts=PROMPTS[:1], max_new_tokens=TOKENS)
    with pytest.raises(InputError, match="written by the hooked engine, not vllm"):
        caption_manifest(VLLMCaptioner(checkpoint), rows, out, prompts=PROMPTS[:1], max_new_tokens=TOKENS)
    assert not fake_vllm.calls


def test_vision_only_family_sends_frames_only(fake_vllm, vl, rows, tmp_path):
    hf_model, processor, _ = vl
    hf_model.save_pretrained(tmp_path / "vl")
    processor.save_pretrained(tmp_path / "vl")
    engine = VLLMCaptioner(tmp_path / "vl")
    assert fake_vllm.llm_kwargs["limit_mm_per_prompt"] == {"video": 1}
    with pytest.raises(InputError, match="no audio input"):
        caption_manifest(engine, rows[:1], tmp_path / "c.jsonl", prompts=PROMPTS[:1], max_new_tokens=TOKENS)
    caption_manifest(engine, rows[:1], tmp_path / "c.jsonl", prompts=PROMPTS[:1], max_new_tokens=TOKENS,
                     use_audio=False)
    [[sent]] = fake_vllm.calls
    assert set(sent["multi_modal_data"]) == {"video"} and sent["mm_processor_kwargs"] == {"fps": 2.0}
    assert "<|video_pad|>" in sent["prompt"] and "<|AUDIO|>" not in sent["prompt"]


def test_unserved_families_and_missing_vllm_are_clear(monkeypatch, checkpoint, tmp_path):
    with pytest.raises(UnsupportedEngineError, match="not a checkpoint folder"):
        vllm_family("tiny")
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'hooked_av\[vllm\]'.*--engine hooked"):
        VLLMCaptioner(checkpoint)


def test_cli_falls_back_to_the_hooked_model_with_a_notice(fake_vllm, rows, tmp_path, capsys):
    manifest = write_manifest(tmp_path / "manifest.jsonl", rows[:1])
    out = tmp_path / "captions.jsonl"
    assert main(["caption", "--manifest", str(manifest), "--out", str(out), "--model", "tiny", "--engine", "vllm",
                 "--prompt", PROMPTS[1], "--max-new-tokens", "2", "--tensor-parallel-size", "2"]) == 0
    err = capsys.readouterr().err
    assert "note: 'tiny' is not a checkpoint folder vLLM could load: captioning with the hooked model" in err
    assert [json.loads(line)["engine"] for line in out.read_text().splitlines()] == ["hooked"]
    assert not fake_vllm.calls
