"""The data subcommands end to end: AudioCaps import -> counterfactual build -> captions, as documented."""

from __future__ import annotations

import argparse
import json

import pytest

from hooked_av.data.cli import add_subcommands
from hooked_av.data.manifest import read_manifest
from tests.test_data_counterfactual import make_clip


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hooked-av")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_import_build_and_caption_from_the_command_line(tmp_path, capsys):
    clips = tmp_path / "clips"
    clips.mkdir()
    rows = [("dogA", 30, 400, "A dog barks", "A dog on a lawn."),
            ("pianoB", 10, 600, "Someone plays a piano melody", "A man at a piano."),
            ("rainC", 0, 800, "Rain pours onto a roof", "Rain on a window."),
            ("goneD", 40, 0, "A siren wails", "")]
    csv_lines = ["audiocap_id,youtube_id,start_time,caption"]
    reviewed = ["sample_id,caption"]
    for i, (ytid, start, freq, audio_caption, video_caption) in enumerate(rows):
        csv_lines.append(f"{i},{ytid},{start},{audio_caption}")
        if freq:
            make_clip(clips / f"{ytid}_{start}.mp4", freq, video_s=1.0, audio_s=1.0)
            reviewed.append(f"{ytid}_{start},{video_caption}")
    (tmp_path / "test.csv").write_text("\n".join(csv_lines) + "\n")
    (tmp_path / "reviewed.csv").write_text("\n".join(reviewed) + "\n")

    assert run(["audiocaps-import", "--csv", str(tmp_path / "test.csv"), "--clips", str(clips),
                "--out", str(tmp_path / "data" / "audiocaps.jsonl"),
                "--captions", str(tmp_path / "reviewed.csv")]) == 0
    assert "missing clip: goneD_40" in capsys.readouterr().out
    assert [r.video_caption for r in read_manifest(tmp_path / "data" / "audiocaps.jsonl")] == [
        "A dog on a lawn.", "A man at a piano.", "Rain on a window."]

    assert run(["build-counterfactuals", "--manifest", str(tmp_path / "data" / "audiocaps.jsonl"), "--k", "2",
                "--out-dir", str(tmp_path / "set")]) == 0
    built = read_manifest(tmp_path / "set" / "manifest.jsonl")
    assert [r.counterfactual for r in built] == [False, False, True, True]

    out = tmp_path / "runs" / "captions.jsonl"
    argv = ["caption", "--manifest", str(tmp_path / "set" / "manifest.jsonl"), "--out", str(out), "--model", "tiny",
            "--prompt", "Describe what you hear.", "--max-new-tokens", "2"]
    assert run(argv) == 0
    captions = [json.loads(line) for line in out.read_text().splitlines()]
    assert [c["sample_id"] for c in captions] == [r.sample_id for r in built]
    assert {c["prompt"] for c in captions} == {"Describe what you hear."}
    assert run(argv) == 0  # a rerun finds everything done
    assert "0 captions written, 4 already there" in capsys.readouterr().out


def test_subcommands_are_registered_with_their_required_options():
    parser = argparse.ArgumentParser(prog="hooked-av")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["build-counterfactuals", "--manifest", "m.jsonl", "--out-dir", "o"])
    assert (args.k, args.target_similarity, args.factual, args.seed) == (250, None, "paired", 0)
    args = parser.parse_args(["audiocaps-import", "--csv", "a.csv", "--csv", "b.csv", "--clips", "c", "--out", "m"])
    assert [str(p) for p in args.csv] == ["a.csv", "b.csv"] and args.pattern == "{youtube_id}_{start_time}.mp4"
    with pytest.raises(SystemExit):  # --csv is required
        parser.parse_args(["audiocaps-import", "--clips", "c", "--out", "m.jsonl"])
    with pytest.raises(SystemExit):  # reviewed captions or a captioner, not both
        parser.parse_args(["audiocaps-import", "--csv", "a.csv", "--clips", "c", "--out", "m.jsonl",
                           "--captions", "r.csv", "--captioner-url", "http://127.0.0.1:1"])
