"""Captioning a manifest with the tiny model: rows as the model generates them, resumable after a kill."""

from __future__ import annotations

import json

import pytest
import torch

import hooked_av
from hooked_av import HookedAVModel, InputError
from hooked_av.data.checkpoint import describe_checkpoint, weights_sha256
from hooked_av.testing.tiny import tiny_omni_thinker
from hooked_av.data.caption_run import caption_manifest
from hooked_av.data.manifest import ManifestRow, load_sample
from tests.test_media import write_clip

PROMPTS = ("Describe what you see and hear.", "Describe what you hear.")
TOKENS = 3


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing in the run may catch it."""


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    write_clip(folder / "a.mp4", seconds=1.0)
    write_clip(folder / "b.mp4", seconds=1.0, size=(48, 64))
    return [ManifestRow("a", folder / "a.mp4", "video", ["a tone"]),
            ManifestRow("b", folder / "b.mp4", folder / "a.mp4", ["a tone"], counterfactual=True,
                        video_source="b", audio_source="a", similarity=0.1)]


@pytest.fixture(scope="module")
def reference(omni, rows, tmp_path_factory):
    """Captions of an uninterrupted run."""
    out = tmp_path_factory.mktemp("ref") / "captions.jsonl"
    caption_manifest(omni[2], rows, out, prompts=PROMPTS, max_new_tokens=TOKENS)
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_rows_hold_the_models_greedy_caption_and_run_settings(omni, rows, reference):
    model = omni[2]
    assert [(r["sample_id"], r["prompt"]) for r in reference] == [(s, p) for s in "ab" for p in PROMPTS]
    assert {r["family"] for r in reference} == {"qwen2_5_omni"}
    assert {r["max_new_tokens"] for r in reference} == {TOKENS}
    assert [r["counterfactual"] for r in reference] == [False, False, True, True]
    # the same caption as calling the model by hand: own track interleaved for "video", separate audio otherwise
    for row, use_audio_in_video, written in ((rows[0], True, reference[0]), (rows[1], False, reference[3])):
        sample = load_sample(row, fps=2.0)
        batch = model.prepare_inputs(written["prompt"], video=sample.frames, audio=sample.audio, fps=2.0,
                                     use_audio_in_video=use_audio_in_video)
        assert model.generate(batch, max_new_tokens=TOKENS).text[0] == written["caption"]


def test_resume_after_a_kill_neither_loses_nor_duplicates_rows(omni, rows, reference, tmp_path, monkeypatch):
    model = omni[2]
    out = tmp_path / "captions.jsonl"
    generate, calls = model.generate, []

    def dies_on_third_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise Killed
        return generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", dies_on_third_call)
    with pytest.raises(Killed):
        caption_manifest(model, rows, out, prompts=PROMPTS, max_new_tokens=TOKENS)
    monkeypatch.undo()
    assert len(out.read_text().splitlines()) == 2
    with out.open("a") as f:
        f.write('{"sample_id": "b", "prompt": "Describe wh')  # the row being written when the kill came

    report = caption_manifest(model, rows, out, prompts=PROMPTS, max_new_tokens=TOKENS)
    assert (report.written, report.already_done, report.errors) == (2, 2, [])
    assert [json.loads(line) for line in out.read_text().splitlines()] == reference

    again = caption_manifest(model, rows, out, prompts=PROMPTS, max_new_tokens=TOKENS)
    assert (again.written, again.already_done) == (0, 4)
    assert len(out.read_text().splitlines()) == 4


def test_broken_samples_are_skipped_and_reported(omni, rows, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    bad = [ManifestRow("broken", broken), ManifestRow("gone", tmp_path / "gone.mp4")]
    out = tmp_path / "captions.jsonl"
    report = caption_manifest(omni[2], bad + rows[:1], out, prompts=PROMPTS[:1], max_new_tokens=TOKENS)
    assert [json.loads(line)["sample_id"] for line in out.read_text().splitlines()] == ["a"]
    assert [(sid, prompt) for sid, prompt, _ in report.errors] == [("broken", None), ("gone", None)]
    errors = [json.loads(line) for line in (tmp_path / "captions.jsonl.errors.jsonl").read_text().splitlines()]
    assert [(e["sample_id"], e["error"]) for e in errors] == [("broken", "MissingMediaError"),
                                                               ("gone", "MissingMediaError")]


def test_resuming_with_other_settings_is_refused(omni, rows, tmp_path):
    out = tmp_path / "captions.jsonl"
    caption_manifest(omni[2], rows[:1], out, prompts=PROMPTS[:1], max_new_tokens=TOKENS)
    with pytest.raises(InputError, match="max_new_tokens 3, not 5"):
        caption_manifest(omni[2], rows[:1], out, prompts=PROMPTS[:1], max_new_tokens=5)
    with pytest.raises(InputError, match="fps 2.0, not 1.0"):
        caption_manifest(omni[2], rows[:1], out, prompts=PROMPTS[:1], max_new_tokens=TOKENS, fps=1.0)


@pytest.fixture(scope="module")
def other_omni():
    """The same family and config as `omni`, other weights: another checkpoint."""
    hf_model, processor = tiny_omni_thinker(seed=7)
    return HookedAVModel.from_hf_model(hf_model, processor)


def test_rows_record_the_checkpoint_and_its_weights_hash(omni, other_omni, reference):
    model = omni[2]
    info = describe_checkpoint(model)
    assert info.model_hash == describe_checkpoint(HookedAVModel.from_hf_model(*tiny_omni_thinker())).model_hash
    assert info.model_hash != describe_checkpoint(other_omni).model_hash
    assert len(info.model_hash) == 64 and info.dtype == "float32" and info.hooked_av_version == hooked_av.__version__
    for row in reference:
        assert (row["model"], row["model_hash"], row["dtype"], row["hooked_av_version"]) == (
            info.model, info.model_hash, "float32", hooked_av.__version__)
        assert (row["max_new_tokens"], row["fps"], row["use_audio"]) == (TOKENS, 2.0, True)


def test_a_weights_change_changes_the_hash(omni):
    hf_model, processor = tiny_omni_thinker()
    before = weights_sha256(hf_model)
    with torch.no_grad():
        next(hf_model.parameters()).view(-1)[0] += 1e-3
    assert weights_sha256(hf_model) != before


def test_resuming_with_another_checkpoint_is_refused(omni, other_omni, rows, tmp_path):
    out = tmp_path / "captions.jsonl"
    caption_manifest(omni[2], rows[:1], out, prompts=PROMPTS[:1], max_new_tokens=TOKENS, checkpoint="model-A")
    with pytest.raises(InputError, match="another checkpoint"):
        caption_manifest(other_omni, rows, out, prompts=PROMPTS[:1], max_new_tokens=TOKENS, checkpoint="model-B")
    assert len(out.read_text().splitlines()) == 1
    # the same weights under another name (a moved folder) resume
    report = caption_manifest(omni[2], rows, out, prompts=PROMPTS[:1], max_new_tokens=TOKENS, checkpoint="moved/A")
    assert (report.written, report.already_done) == (1, 1)
