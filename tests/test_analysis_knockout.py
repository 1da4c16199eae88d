"""Attention knockout (paper Sec. 7): known answers, an independent reference, the shared-prefix sweep."""

from __future__ import annotations

import json

import pytest
import torch

from hooked_av import HookedAVModel, InputError
from hooked_av.analysis.knockout import (Knockout, generate_knockouts, generate_with_knockout, knockout_hooks,
                                         knockout_sweep, layer_windows, sweep_configurations)
from hooked_av.data.manifest import ManifestRow, load_sample
from hooked_av.model.errors import EmptySelectionError
from hooked_av.testing.tiny import tiny_omni_thinker
from tests.test_media import write_clip

NOT_AUDIO = ("video", "image", "text", "template", "special", "generated")


def test_layer_windows_are_centred_and_clipped():
    windows = dict(layer_windows(28, 9))
    assert windows[0] == (0, 1, 2, 3, 4)
    assert windows[10] == tuple(range(6, 15))
    assert windows[27] == (23, 24, 25, 26, 27)
    assert len(layer_windows(28)) == 28


def audio_sensitive_model():
    """A tiny model whose greedy tokens depend on the audio: with 0.02-scale random weights the decoder's
    output barely moves with any input, so its weight matrices are scaled up 10x."""
    hf_model, processor = tiny_omni_thinker(seed=0)
    with torch.no_grad():
        for p in hf_model.model.language_model.parameters():
            if p.ndim == 2:
                p.mul_(10.0)
    return HookedAVModel.from_hf_model(hf_model, processor)


def test_blocking_audio_everywhere_makes_the_output_independent_of_the_audio(media):
    model = audio_sensitive_model()
    batches = [model.prepare_inputs("Describe what you hear.", video=media["video"], audio=a)
               for a in (media["audio"], media["audio"][::-1].copy() * 3)]
    ko = Knockout(sources="audio", targets=NOT_AUDIO, layers=tuple(range(model.cfg.n_layers)))
    hooks = [knockout_hooks(model, [ko], model.modality_map(b), b["input_ids"].shape[1] + 12) for b in batches]
    clean = [model.generate(b, max_new_tokens=12, stop_token_ids=[]).new_tokens for b in batches]
    knocked = [model.generate(b, max_new_tokens=12, stop_token_ids=[], fwd_hooks=h).new_tokens
               for b, h in zip(batches, hooks)]
    assert not torch.equal(clean[0], clean[1])  # the audio changes the generated tokens...
    assert torch.equal(knocked[0], knocked[1])  # ...unless no other position may read it, at any layer
    not_audio = ~model.modality_map(batches[0]).mask("audio")
    logits = [model.run_with_hooks(b, fwd_hooks=h) for b, h in zip(batches, hooks)]
    assert torch.allclose(logits[0][not_audio], logits[1][not_audio], atol=1e-5)


def hf_knockout(hf_model, batch, layers, targets, sources):
    """Independent reference: HF's eager attention with its 4-D mask edited by forward pre-hooks."""
    def edit(module, args, kwargs):
        mask = kwargs["attention_mask"].clone()
        mask[:, :, targets[:, None], sources[None, :]] = torch.finfo(mask.dtype).min
        kwargs["attention_mask"] = mask
        return args, kwargs

    handles = [hf_model.model.language_model.layers[l].self_attn.register_forward_pre_hook(edit, with_kwargs=True)
               for l in layers]
    hf_model.set_attn_implementation("eager")
    try:
        return hf_model(**batch).logits
    finally:
        hf_model.set_attn_implementation("sdpa")
        for h in handles:
            h.remove()


@pytest.mark.parametrize("source, layers", [("audio", (0,)), ("video", (1,)), ("video", (0, 1))])
def test_mask_hook_equals_hf_with_an_edited_eager_mask(omni, omni_batches, source, layers):
    hf_model, _, model = omni
    batch = omni_batches["audio+video"]
    mm = model.modality_map(batch)
    n = batch["input_ids"].shape[1]
    targets = torch.arange(n - 12, n)  # the query text at the end of the prompt and the template after it
    ko = Knockout(sources=source, targets=tuple(targets.tolist()), layers=layers)
    ours = model.run_with_hooks(batch, fwd_hooks=knockout_hooks(model, [ko], mm, n))
    assert [b.attn.last_path for b in model.blocks] == ["sdpa", "sdpa"]
    ref = hf_knockout(hf_model, batch, layers, targets, mm.positions(source))
    assert (ours - ref).abs().max() < 1e-4
    assert (ours[:, -1] - model(batch)[:, -1]).abs().max() > 1e-4


def test_head_specific_knockout_touches_only_those_heads(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["audio+video"]
    mm = model.modality_map(batch)
    n = batch["input_ids"].shape[1]
    ko = Knockout(sources="audio", targets=(n - 1,), layers=(0,), heads=(2,))
    seen = {}
    hooks = knockout_hooks(model, [ko], mm, n) + [
        ("blocks.0.attn.hook_pattern", lambda p, hook: seen.setdefault("p", p.clone()))]
    model.run_with_hooks(batch, fwd_hooks=hooks)
    audio = mm.mask("audio")[0]
    last_row = seen["p"][0, :, -1]
    assert last_row[2, audio].sum() < 1e-6
    assert (last_row[[0, 1, 3]][:, audio].sum(-1) > 1e-3).all()


@pytest.mark.parametrize("include_last", [True, False])
def test_shared_prefix_sweep_equals_each_configuration_from_scratch(omni, omni_batches, include_last):
    _, _, model = omni
    batch = omni_batches["use_audio_in_video"]
    configs = [c[2] for c in sweep_configurations(model.cfg.n_layers, ("audio", "video"), 1, include_last, True)]
    configs += [Knockout(sources=("audio", "video"), layers=(0, 1), heads=(0, 3), include_last_prompt_position=include_last)]
    shared = generate_knockouts(model, batch, configs, max_new_tokens=10, stop_token_ids=[])
    assert [b.attn.last_path for b in model.blocks] == ["shared_prefix", "shared_prefix"]
    for ko, row in zip(configs, shared):
        ref = generate_with_knockout(model, batch, ko, max_new_tokens=10, stop_token_ids=[])
        assert row.tolist() == ref.new_tokens[0].tolist()
    assert len({tuple(r.tolist()) for r in shared}) > 1  # the knockouts do change the output


@pytest.fixture(scope="module")
def clip_rows(tmp_path_factory):
    """Manifest rows of two clips with their own sound track, and one whose clip is missing."""
    folder = tmp_path_factory.mktemp("clips")
    write_clip(folder / "a.mp4", seconds=2.0)
    write_clip(folder / "b.mp4", seconds=1.0, size=(48, 64))
    return [ManifestRow("s1", folder / "a.mp4", "video", ["a tone"], video_caption="grey frames"),
            ManifestRow("broken", folder / "missing.mp4", "video", ["a tone"]),
            ManifestRow("s2", folder / "b.mp4", folder / "a.mp4", ["a tone"], counterfactual=True,
                        video_source="b", audio_source="a", similarity=0.1)]


def test_sweep_writes_one_row_per_configuration_and_resumes(omni, clip_rows, tmp_path):
    _, _, model = omni
    prompts = ("Describe what you see.", "Describe what you hear.")
    out = tmp_path / "sweep.jsonl"
    knockout_sweep(model, clip_rows[:1], out, prompts=prompts, window=1, max_new_tokens=4)
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    per_prompt = 1 + 2 * model.cfg.n_layers
    assert len(rows) == 2 * per_prompt
    # a run killed mid-write leaves a torn line; the rerun repairs it, skips what is done, adds the rest
    out.write_text(out.read_text() + '{"sample_id": "s2", "prom')
    knockout_sweep(model, clip_rows, out, prompts=prompts, window=1, max_new_tokens=4)
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    keys = [(r["sample_id"], r["prompt"], r["source"], r["centre_layer"]) for r in rows]
    assert len(keys) == len(set(keys)) == 4 * per_prompt
    errors = [json.loads(l) for l in (tmp_path / "sweep.jsonl.errors.jsonl").read_text().splitlines()]
    assert errors[0]["sample_id"] == "broken" and errors[0]["error"] == "MissingMediaError"
    for row in clip_rows[::2]:  # the sound is the video's own track (interleaved) or a separate audio input
        baseline = next(r for r in rows if r["sample_id"] == row.sample_id and r["source"] == "none" and
                        r["prompt"] == prompts[0])
        sample = load_sample(row)
        ref = model.generate(model.prepare_inputs(prompts[0], video=sample.frames, audio=sample.audio,
                                                  use_audio_in_video=row.audio_in_video), max_new_tokens=4)
        assert baseline["tokens"] == [t for t in ref.new_tokens[0].tolist() if t != model.adapter.pad_token_id()]


def test_sweep_rejects_duplicate_sample_ids_up_front(omni, clip_rows, tmp_path):
    _, _, model = omni
    twin = ManifestRow("s1", clip_rows[2].video, "video", ["another clip"])
    out = tmp_path / "sweep.jsonl"
    with pytest.raises(InputError, match="sample_id 's1' is used by 2 samples"):
        knockout_sweep(model, [clip_rows[0], twin], out, window=1, max_new_tokens=2)
    assert not out.exists()


def test_a_knockout_that_selects_nothing_is_an_error(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["audio+video"]  # no image positions
    n = batch["input_ids"].shape[1]
    with pytest.raises(EmptySelectionError, match="sources .*'image'.* select no position"):
        generate_with_knockout(model, batch, Knockout(sources="image", layers=(0,)), max_new_tokens=2)
    with pytest.raises(EmptySelectionError, match="targets .*'image'.* select no position"):
        knockout_hooks(model, [Knockout(sources="audio", targets="image", layers=(0,))], model.modality_map(batch), n)
    with pytest.raises(EmptySelectionError, match="image"):
        generate_knockouts(model, batch, [None, Knockout(sources="image", layers=(0,))], max_new_tokens=2)
    with pytest.raises(EmptySelectionError, match="position 5000"):
        knockout_hooks(model, [Knockout(sources=5000, targets=(n - 1,), layers=(0,))], model.modality_map(batch), n)


def test_sweep_records_a_skip_for_a_source_the_sample_lacks(omni, clip_rows, tmp_path):
    _, _, model = omni
    out = tmp_path / "sweep.jsonl"
    for _ in range(2):  # the rerun neither retries nor duplicates the skips
        knockout_sweep(model, clip_rows[:1], out, sources=("audio", "image"), prompts=("Describe.",), window=1,
                       max_new_tokens=2)
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert sorted((r["source"], r["centre_layer"]) for r in rows) == [("audio", 0), ("audio", 1), ("none", None)]
    skips = [json.loads(l) for l in (tmp_path / "sweep.jsonl.skipped.jsonl").read_text().splitlines()]
    assert [(s["sample_id"], s["source"], s["centre_layer"]) for s in skips] == [("s1", "image", 0), ("s1", "image", 1)]
    assert "no position" in skips[0]["reason"] and "image" in skips[0]["reason"]


def test_sweep_shows_progress_and_writes_log_lines_above_the_bar(omni, clip_rows, tmp_path, capsys):
    _, _, model = omni
    knockout_sweep(model, clip_rows[:2], tmp_path / "sweep.jsonl", prompts=("Describe.",), window=1,
                   max_new_tokens=2)
    err = capsys.readouterr().err
    assert "knockout sweep" in err and "2/2" in err
    lines = [line.split("\r")[-1] for line in err.split("\n")]
    assert any(line.startswith("skipping sample broken") for line in lines)


class ConstantJudge:
    """A judge backend whose score depends only on the caption's length, for a deterministic pipeline test."""

    name = "length-judge"

    def complete(self, prompts):
        return [json.dumps({"reasoning": "r", "score": len(p.rsplit("Candidate caption:", 1)[1]) % 7 / 7})
                for p in prompts]


def test_sweep_scores_make_the_knockout_figure(omni, clip_rows, tmp_path):
    from hooked_av.analysis.knockout import TASK_PROMPTS, knockout_score_table
    from hooked_av.data.jsonl import append_rows
    from hooked_av.eval import Judge, load_scores, score_captions
    from hooked_av.plot import plot_knockout_curves

    _, _, model = omni
    manifest = tmp_path / "manifest.jsonl"
    append_rows(manifest, [{"sample_id": sid, "video": "v.mp4", "audio": "video", "audio_captions": ["a dog barks"],
                            "video_caption": "a dog on grass", "counterfactual": cf,
                            **({"video_source": "f1", "audio_source": "f0", "similarity": 0.1} if cf else {})}
                           for sid, cf in (("f1", False), ("c1", True))])
    rows = [ManifestRow("f1", clip_rows[0].video, "video", ["a dog barks"]),
            ManifestRow("c1", clip_rows[2].video, clip_rows[0].video, ["a dog barks"], counterfactual=True,
                        video_source="b", audio_source="a", similarity=0.1)]
    sweep = knockout_sweep(model, rows, tmp_path / "sweep.jsonl", prompts=tuple(TASK_PROMPTS.values()),
                           window=1, max_new_tokens=3)
    summary = score_captions(manifest, sweep, tmp_path / "scores.jsonl", Judge(ConstantJudge()))
    per_sample = 2 * 2 * (1 + 2 * model.cfg.n_layers)  # prompts x modalities x configurations
    assert summary.scored == 2 * per_sample
    table = knockout_score_table(load_scores(tmp_path / "scores.jsonl"))
    assert len(table) == 2 * per_sample // 2  # each modality only under its own prompt
    assert set(table.setting) == {"factual", "counterfactual"} and set(table.task) == {"audio", "video"}
    assert set(table.source) == {"none", "audio", "video"}
    assert sorted(table[table.source == "audio"].centre_layer.unique()) == list(range(model.cfg.n_layers))
    plot_knockout_curves(table, tmp_path / "fig6.png", window=1)
    assert (tmp_path / "fig6.png").stat().st_size > 10_000


def test_sweep_rows_record_the_checkpoint_and_refuse_another(omni, clip_rows, tmp_path):
    """Sweep rows are captions the judge scores: they carry the weights hash its score key holds, and a file
    written by one checkpoint is not resumed by another (its rows would be taken as done)."""
    from hooked_av.data.checkpoint import weights_sha256

    _, _, model = omni
    out = tmp_path / "sweep.jsonl"
    knockout_sweep(model, clip_rows[:1], out, sources=("audio",), prompts=("Describe what you hear.",), window=3,
                   max_new_tokens=2)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["model_hash"] for r in rows} == {weights_sha256(model.adapter.hf_model)}
    other = HookedAVModel.from_hf_model(*tiny_omni_thinker(seed=5))
    with pytest.raises(InputError, match="another checkpoint"):
        knockout_sweep(other, clip_rows[:2], out, sources=("audio",), prompts=("Describe what you hear.",),
                       window=3, max_new_tokens=2)
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
