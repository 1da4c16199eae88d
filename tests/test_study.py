"""`hooked-av study` end to end on a tiny random-weight model with the keyword scorer as the judge: every figure,
a report whose numbers are those of the result rows, a resume that redoes nothing, and the analysis commands'
one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hooked_av import InputError
from hooked_av.cli import main
from hooked_av.data.jsonl import append_rows, iter_rows
from hooked_av.data.manifest import read_manifest
from hooked_av.eval.keywords import keyword_score
from hooked_av.model.hooked_av_model import HookedAVModel
from hooked_av.plot.files import FIGURE_FILES, RESULT_FILES
from hooked_av.study.run import StudyConfig, StudyInputs, study_commands
from hooked_av.testing.tiny import tiny_omni_thinker
from tests.test_cli import assert_one_line_error, run_main
from tests.test_media import write_clip

HEAR, BOTH = "Describe what you hear.", "Describe what you see and hear."


@pytest.fixture(scope="module")
def study_inputs(tmp_path_factory):
    """A saved tiny Omni thinker and a manifest of 2 factual and 2 counterfactual samples."""
    root = tmp_path_factory.mktemp("study_inputs")
    hf_model, processor = tiny_omni_thinker()
    hf_model.save_pretrained(root / "omni")
    processor.save_pretrained(root / "omni")
    write_clip(root / "a.mp4", seconds=1.0)
    write_clip(root / "b.mp4", seconds=1.0, size=(48, 64))
    manifest = root / "manifest.jsonl"
    dog, bell = ["a dog barks", "a dog is barking"], ["a bell rings", "bells ringing"]
    append_rows(manifest, [
        {"sample_id": "f1", "video": "a.mp4", "audio": "video", "audio_captions": dog, "video_caption": "a dog",
         "counterfactual": False},
        {"sample_id": "f2", "video": "b.mp4", "audio": "video", "audio_captions": bell, "video_caption": "a bell",
         "counterfactual": False},
        {"sample_id": "c1", "video": "b.mp4", "audio": "a.mp4", "audio_captions": dog, "video_caption": "a bell",
         "counterfactual": True, "video_source": "f2", "audio_source": "f1", "similarity": 0.1},
        {"sample_id": "c2", "video": "a.mp4", "audio": "b.mp4", "audio_captions": bell, "video_caption": "a dog",
         "counterfactual": True, "video_source": "f1", "audio_source": "f2", "similarity": 0.1},
        {"sample_id": "f3", "video": "a.mp4", "audio": "video", "audio_captions": dog, "video_caption": "a dog",
         "counterfactual": False}])
    return root / "omni", manifest


def study_argv(model: Path, manifest: Path, out: Path) -> list:
    return ["study", "--model", model, "--data", manifest, "--out", out, "--base-model", model, "--samples", 1,
            "--max-new-tokens", 3, "--attention-max-new-tokens", 3, "--window", 1]


@pytest.fixture(scope="module")
def study_run(study_inputs, tmp_path_factory):
    model, manifest = study_inputs
    out = tmp_path_factory.mktemp("study")
    assert main([str(a) for a in study_argv(model, manifest, out)]) == 0
    return out


def rows(out: Path, name: str) -> list[dict]:
    return list(iter_rows(out / RESULT_FILES[name]))


def mean(values) -> float:
    return float(np.mean(list(values)))


def headline(summary: dict, figure: str, starts: str) -> dict:
    return next(h for h in summary["figures"][figure] if h["measure"].startswith(starts))


def test_the_study_writes_every_figure_and_the_results(study_run):
    for png in FIGURE_FILES.values():
        assert (study_run / png).stat().st_size > 10_000, png
        assert (study_run / png).with_suffix(".csv").is_file()
    studied = {r["sample_id"] for r in iter_rows(study_run / "manifest.jsonl")}
    assert studied == {"f1", "c1"}  # --samples 1: the first factual and the first counterfactual row
    captions = rows(study_run, "captions")
    prompts = (BOTH, HEAR, "Describe what you see.")
    assert {(r["sample_id"], r["prompt"]) for r in captions} == {(s, p) for s in studied for p in prompts}
    assert {r["sample_id"] for r in rows(study_run, "attention")} == studied
    assert {r["sample_id"] for r in rows(study_run, "logit_lens")} == studied
    assert {r["sample_id"] for r in rows(study_run, "token_shift")} == studied
    assert {r["sample_id"] for r in rows(study_run, "knockout")} == studied


def test_sample_counts_per_step():
    config = StudyConfig(samples=10, step_samples={"knockout-sweep": 2, "attention": 50})
    assert [config.samples_for(s) for s in ("caption", "knockout-sweep", "attention")] == [10, 2, 10]
    assert StudyConfig(step_samples={"token-shift": 3}).samples_for("token-shift") == 3
    commands = {c.argv[0]: c.argv for c in study_commands(StudyInputs("m", Path("d.jsonl")), config, Path("out"))}
    assert commands["knockout-sweep"][commands["knockout-sweep"].index("--samples") + 1] == "2"
    assert "token-shift" not in commands  # no base model
    with pytest.raises(InputError, match="unknown study step 'probe'"):
        StudyConfig(steps=("caption", "probe"))


def test_the_judge_is_the_keyword_scorer(study_run, study_inputs):
    manifest = {r["sample_id"]: r for r in iter_rows(study_inputs[1])}
    captions = {(r["sample_id"], r["prompt"]): r["caption"] for r in rows(study_run, "captions")}
    scores = rows(study_run, "caption_scores")
    assert len(scores) == 2 * len(captions)
    for row in scores:
        refs = manifest[row["sample_id"]]["audio_captions" if row["modality"] == "audio" else "video_caption"]
        refs = refs if isinstance(refs, list) else [refs]
        assert row["score"] == keyword_score(captions[row["sample_id"], row["prompt"]], refs).score
        assert row["judge_model"] == "keywords"


def test_the_report_numbers_are_those_of_the_rows(study_run):
    summary = json.loads((study_run / "summary.json").read_text())
    report = (study_run / "report.md").read_text()
    scores = rows(study_run, "caption_scores")
    for cf, name in ((False, "audio fidelity, factual"), (True, "audio fidelity, counterfactual")):
        expected = mean(r["score"] for r in scores if r["modality"] == "audio" and r["prompt"] == HEAR
                        and r["counterfactual"] == cf)
        line = headline(summary, "fig2", f"{name}, {HEAR!r}")
        assert line["value"] == pytest.approx(expected) and line["n"] == 1
    latent = rows(study_run, "latent_scores")
    line = headline(summary, "fig5", "latent audio understanding (logit-lens words), counterfactual")
    assert line["value"] == pytest.approx(mean(r["score"] for r in latent if r["counterfactual"]))
    attention = rows(study_run, "attention")  # 2 layers: the "deep" range (15-30 of 36) is layer 1
    line = headline(summary, "fig4", "video share, layers 1-1")
    video = attention[0]["groups"].index("video")
    head_mean = [np.mean(r["per_head"][1], axis=0)[video] for r in attention if r["prompt"] == BOTH]
    assert line["value"] == pytest.approx(mean(head_mean))
    shift = rows(study_run, "token_shift")
    line = headline(summary, "fig7", "mean KL(base ‖ AV)")
    assert line["value"] == pytest.approx(mean(kl for r in shift for kl in r["kl_base_av"]), rel=1e-5)
    assert line["n"] == sum(len(r["response_ids"]) for r in shift)
    sweep = rows(study_run, "knockout_scores")
    line = headline(summary, "fig6", "counterfactual audio fidelity, no knockout")
    assert line["value"] == pytest.approx(mean(r["score"] for r in sweep if r["counterfactual"] and
                                               r["source"] == "none" and r["modality"] == "audio"
                                               and r["prompt"] == HEAR))
    for figure, lines in summary["figures"].items():
        assert lines, figure
        for h in lines:  # every number is in the report, on its measure's line, next to the paper's
            shown = ("—" if h["value"] is None else f"{100 * h['value']:.1f}%" if h["percent"]
                     else f"{h['value']:.3f}")
            assert f"| {h['measure']} | {shown} | {h['paper']} | {h['n']} |" in report
    assert "hooked-av attention --model" in report and "hooked-av judge" in report


def test_the_quoted_command_reproduces_the_rows(study_run, study_inputs, tmp_path):
    model, manifest = study_inputs
    config = StudyConfig(samples=1, max_new_tokens=3, attention_max_new_tokens=3, window=1)
    commands = study_commands(StudyInputs(str(model), manifest, str(model)), config, study_run)
    summary = json.loads((study_run / "summary.json").read_text())
    assert [str(c) for c in commands] == summary["commands"]
    argv = list(next(c for c in commands if c.argv[0] == "attention").argv)
    argv[argv.index("--out") + 1] = str(tmp_path / "attention.jsonl")
    assert main(argv) == 0
    again = list(iter_rows(tmp_path / "attention.jsonl"))
    assert [(r["sample_id"], r["generated_text"]) for r in again] == \
        [(r["sample_id"], r["generated_text"]) for r in rows(study_run, "attention")]
    assert np.allclose([r["per_head"] for r in again], [r["per_head"] for r in rows(study_run, "attention")])


def test_a_rerun_redoes_only_what_is_missing(study_run, study_inputs, monkeypatch, capsys):
    model, manifest = study_inputs
    files = {name: (study_run / filename).read_bytes() for name, filename in RESULT_FILES.items()}
    calls = []
    prepare = HookedAVModel.prepare_inputs
    monkeypatch.setattr(HookedAVModel, "prepare_inputs",
                        lambda self, *a, **k: calls.append(1) or prepare(self, *a, **k))
    # a killed run: the last caption and the last attention row never made it to disk
    for name in ("captions", "attention"):
        lines = files[name].decode().splitlines(keepends=True)
        (study_run / RESULT_FILES[name]).write_text("".join(lines[:-1]))
    assert main([str(a) for a in study_argv(model, manifest, study_run)]) == 0
    assert len(calls) == 2  # one caption and one attention sample, nothing else
    assert {name: (study_run / filename).read_bytes() for name, filename in RESULT_FILES.items()} == files
    calls.clear()
    assert main([str(a) for a in study_argv(model, manifest, study_run)]) == 0
    assert not calls
    err = capsys.readouterr().err
    for bar in ("captioning", "attention by modality", "latent words", "knockout sweep", "token shift"):
        assert bar in err


def test_study_and_analysis_mistakes_are_one_line_errors(study_inputs, tmp_path, capsys):
    model, manifest = study_inputs
    code, err = run_main(["study", "--data", manifest, "--out", tmp_path / "s"], capsys)
    assert_one_line_error(code, err, "both --model and --data", "only --data")
    code, err = run_main(["study", "--model", model, "--out", tmp_path / "s"], capsys)
    assert_one_line_error(code, err, "both --model and --data")
    code, err = run_main(["study", "--model", model, "--data", manifest, "--out", tmp_path / "s", "--judge",
                          "keywrds"], capsys)
    assert_one_line_error(code, err, "--judge 'keywrds'", "invalid choice")
    assert not (tmp_path / "s").exists()  # refused before anything ran
    code, err = run_main(["attention", "--model", model, "--data", tmp_path / "nope.jsonl", "--out",
                          tmp_path / "a.jsonl"], capsys)
    assert_one_line_error(code, err, "manifest not found", "nope.jsonl")
    code, err = run_main(["knockout-sweep", "--model", model, "--data", manifest, "--out", tmp_path], capsys)
    assert_one_line_error(code, err, "is a folder")
    code, err = run_main(["token-shift", "--model", tmp_path / "no_model", "--base-model", model, "--data",
                          manifest, "--out", tmp_path / "t.jsonl"], capsys)
    assert_one_line_error(code, err, "no_model")
    code, err = run_main(["plot", "--results", tmp_path], capsys)
    assert_one_line_error(code, err, "no result file")
    (tmp_path / "empty.jsonl").write_text("")
    code, err = run_main(["plot", "--attention", tmp_path / "empty.jsonl", "--out", tmp_path], capsys)
    assert_one_line_error(code, err, "no result rows", "hooked-av attention")


def test_the_keyword_judge_command_and_its_failure_records(study_inputs, tmp_path, capsys):
    _, manifest = study_inputs
    captions = tmp_path / "captions.jsonl"
    append_rows(captions, [{"sample_id": "f1", "prompt": HEAR, "caption": "I hear a dog barking."},
                           {"sample_id": "f2", "prompt": HEAR, "caption": "a quiet room"}])
    out = tmp_path / "scores.jsonl"
    assert main(["judge", "--backend", "keywords", "--manifest", str(manifest), "--captions", str(captions),
                 "--out", str(out), "--modalities", "audio"]) == 0
    assert [(r["sample_id"], r["score"]) for r in iter_rows(out)] == [("f1", 1.0), ("f2", 0.0)]
    assert "judge keywords: 2 scored" in capsys.readouterr().out
    from hooked_av.eval.judge import JudgeRequest
    from hooked_av.eval.keywords import KeywordJudge
    from hooked_av.eval.rubric import AUDIO_FIDELITY

    failed = KeywordJudge().score_many([JudgeRequest(AUDIO_FIDELITY, ("a sound in the background",), "x")])[0]
    assert failed.status == "failed" and failed.score is None and "no keyword" in failed.error


def test_headlines_from_known_score_rows(tmp_path):
    from hooked_av.study.report import fig2, fig6

    def score(sid, prompt, modality, cf, value, **extra):
        return {"sample_id": sid, "prompt": prompt, "modality": modality, "caption_model": "m",
                "caption_model_hash": "h", "counterfactual": cf, "status": "ok" if value is not None else "failed",
                "score": value, **extra}

    append_rows(tmp_path / RESULT_FILES["caption_scores"], [
        score("f1", HEAR, "audio", False, 1.0), score("f2", HEAR, "audio", False, 0.5),
        score("c1", HEAR, "audio", True, None),  # a failure record, then its retry supersedes it
        score("c1", HEAR, "audio", True, 0.25), score("c2", HEAR, "audio", True, 0.0),
        score("c3", HEAR, "audio", True, None)])  # a failure that stays one: left out, not a 0
    lines = {h.measure: h for h in fig2(tmp_path)}
    assert lines[f"audio fidelity, factual, {HEAR!r}"].value == 0.75
    assert (lines[f"audio fidelity, counterfactual, {HEAR!r}"].value, lines[f"audio fidelity, counterfactual, "
                                                                             f"{HEAR!r}"].n) == (0.125, 2)
    assert lines[f"relative drop of audio fidelity, {HEAR!r}"].value == pytest.approx(1 - 0.125 / 0.75)
    assert lines[f"audio fidelity, factual, {BOTH!r}"].value is None
    append_rows(tmp_path / RESULT_FILES["knockout_scores"], [
        score(sid, HEAR, "audio", True, value, source=source, centre_layer=centre)
        for sid, source, centre, value in (("c1", "none", None, 0.2), ("c2", "none", None, 0.4),
                                           ("c1", "video", 0, 0.5), ("c1", "video", 1, 0.9), ("c2", "video", 1, 0.7),
                                           ("c1", "audio", 0, 0.1), ("c1", "audio", 1, 0.0))])
    lines = {h.measure: h for h in fig6(tmp_path)}
    assert lines["counterfactual audio fidelity, no knockout ('Describe what you hear.')"].value == pytest.approx(0.3)
    best = lines["counterfactual audio fidelity, G↛V, best window (centre layer 1)"]
    assert (best.value, best.n) == (pytest.approx(0.8), 2)
    assert lines["counterfactual audio fidelity, G↛A, worst window (centre layer 1)"].value == 0.0


def test_the_row_files_hold_what_the_in_memory_analyses_return(omni, tmp_path):
    from hooked_av.analysis.attention import attention_over_samples, attention_run, read_attention
    from hooked_av.analysis.logit_lens import latent_words_run, lens_from_row, logit_lens
    from hooked_av.analysis.token_shift import read_token_shift, token_shift_over_samples, token_shift_run
    from hooked_av.data.manifest import ManifestRow, load_sample, sample_inputs

    _, _, model = omni
    write_clip(tmp_path / "a.mp4", seconds=1.0)
    rows = [ManifestRow("s1", tmp_path / "a.mp4", "video", ["a tone"])]
    attention_run(model, rows, tmp_path / "attention.jsonl", max_new_tokens=3)
    [stored], [direct] = read_attention(tmp_path / "attention.jsonl"), attention_over_samples(
        model, rows, max_new_tokens=3)
    assert stored.groups == direct.groups and torch.allclose(stored.shares, direct.shares)
    token_shift_run(model, model, rows, tmp_path / "shift.jsonl", max_new_tokens=3)
    [stored], [direct] = read_token_shift(tmp_path / "shift.jsonl"), token_shift_over_samples(
        model, model, rows, max_new_tokens=3)
    assert stored.response_ids.tolist() == direct.response_ids.tolist()
    assert torch.equal(stored.kl_base_av, direct.kl_base_av) and torch.equal(stored.base_rank, direct.base_rank)
    latent_words_run(model, rows, tmp_path / "lens.jsonl", table=True, last_layers=1)
    [row] = iter_rows(tmp_path / "lens.jsonl")
    sample = load_sample(rows[0])
    lens = logit_lens(model, model.prepare_inputs("Describe what you see and hear.", **sample_inputs(sample)),
                      top_k=1)
    again = lens_from_row(row)
    assert again.top1() == lens.top1() and torch.equal(again.top_ids, lens.top_ids)
    assert row["words"] == lens.words(last_layers=1) and again.input_tokens == lens.input_tokens


def test_a_bare_study_runs_on_the_organism(monkeypatch, tmp_path):
    import argparse

    from hooked_av.organism import shipped_organism, shipped_twin
    from hooked_av.study.cli import study_inputs

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr("hooked_av.study.run.ORGANISM_SET_SIZE", 4)
    bare = study_inputs(argparse.Namespace(model=None, data=None, base_model=None))
    assert (bare.model, bare.base_model) == (str(shipped_organism()), str(shipped_twin()))
    rows = read_manifest(bare.data)
    assert bare.data.is_relative_to(tmp_path) and len(rows) == 8 and sum(r.counterfactual for r in rows) == 4
    assert study_inputs(argparse.Namespace(model=None, data=None, base_model="vl")).base_model == "vl"
    assert study_inputs(argparse.Namespace(model="m", data=Path("d"), base_model=None)) == StudyInputs("m", Path("d"))
    with pytest.raises(InputError, match="needs both --model and --data"):
        study_inputs(argparse.Namespace(model="m", data=None, base_model=None))
