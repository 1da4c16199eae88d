"""Media checks: claimed streams, decodability, duration; `hooked-av check-manifest` reports every row's problems."""

from __future__ import annotations

import json

import pytest

from hooked_av.cli import main
from hooked_av.data.manifest import ManifestRow
from hooked_av.data.probe import media_problems, probe_media
from tests.test_media import write_clip


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe")
    write_clip(folder / "good.mp4", seconds=1.0)
    write_clip(folder / "silent.mp4", seconds=1.0, with_audio=False)
    (folder / "garbage.mp4").write_bytes(b"\x00not a video at all" * 50)
    data = (folder / "good.mp4").read_bytes()
    (folder / "cut.mp4").write_bytes(data[:len(data) // 2])  # a download cut half-way
    return folder


def test_probe_reports_streams_and_duration(clips):
    good = probe_media(clips / "good.mp4")
    assert (good.has_video, good.has_audio) == (True, True) and good.duration == pytest.approx(1.0, abs=0.01)
    silent = probe_media(clips / "silent.mp4")
    assert (silent.has_video, silent.has_audio) == (True, False)


@pytest.mark.parametrize("name, audio, expected", [
    ("good.mp4", "video", []),
    ("silent.mp4", "video", ["has no audio stream"]),
    ("silent.mp4", "good.mp4", []),  # the sound comes from another file
    ("good.mp4", "silent.mp4", ["silent.mp4 has no audio stream"]),
    ("garbage.mp4", "video", ["cannot decode"]),
    ("cut.mp4", "video", ["cannot decode"]),
    ("gone.mp4", "video", ["media file not found"]),
])
def test_media_problems_of_a_row(clips, name, audio, expected):
    row = ManifestRow("s", clips / name, audio if audio == "video" else clips / audio, ["x"])
    problems = media_problems(row)
    assert len(problems) == len(expected)
    for problem, needle in zip(problems, expected):
        assert needle in problem


def test_check_manifest_reports_every_rows_problems(clips, tmp_path, capsys):
    manifest = tmp_path / "manifest.jsonl"
    row = {"audio": "video", "audio_captions": ["x"], "counterfactual": False}
    lines = [json.dumps({"sample_id": "ok", "video": str(clips / "good.mp4"), **row}),
             json.dumps({"sample_id": "silent", "video": str(clips / "silent.mp4"), **row}),
             '{"sample_id": "torn", "video": ',
             json.dumps({"sample_id": "ok", "video": str(clips / "good.mp4"), **row}),
             json.dumps({"sample_id": "bad", "video": str(clips / "garbage.mp4"), **row}),
             json.dumps({"sample_id": "typo", "vidoe": "x.mp4", **row})]
    manifest.write_text("\n".join(lines) + "\n")
    assert main(["check-manifest", str(manifest)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out[:-1]] == [
        "line 2 (silent)", "line 3", "line 4 (ok)", "line 5 (bad)", "line 6 (typo)"]
    assert "has no audio stream" in out[0] and "not a JSON object" in out[1] and "already used on line 1" in out[2]
    assert "cannot decode" in out[3] and "'vidoe': unknown field" in out[4]
    assert out[-1] == f"{manifest}: 5 problems in 6 lines (3 rows read)"

    manifest.write_text(lines[0] + "\n")
    assert main(["check-manifest", str(manifest)]) == 0
    assert capsys.readouterr().out.strip() == f"{manifest}: 1 rows, no problems"
