"""The JSONL manifest: round trip with relative paths, validation naming line and field, media loading, skipping."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hooked_av import InputError
from hooked_av.data.manifest import (ManifestError, ManifestRow, iter_samples, load_sample, read_manifest,
                                     write_manifest)
from tests.test_media import write_clip

FACTUAL = {"sample_id": "a", "video": "clips/a.mp4", "audio": "video", "audio_captions": ["a dog barks"],
           "video_caption": "a dog in a yard", "counterfactual": False, "video_source": None,
           "audio_source": None, "similarity": None}
COUNTERFACTUAL = {**FACTUAL, "sample_id": "b", "counterfactual": True, "video_source": "a", "audio_source": "c",
                  "similarity": 0.31}


def write_lines(path, *objects):
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects))
    return path


def test_round_trip_keeps_fields_and_stores_paths_relative_to_the_manifest(tmp_path):
    outside = tmp_path / "elsewhere" / "sound.wav"
    rows = [ManifestRow("a", tmp_path / "data" / "clips" / "a.mp4", "video", ["c1", "c2"], "v", False),
            ManifestRow("b", tmp_path / "data" / "clips" / "b.mp4", outside, ["c3"], None, True, "a", "c", 0.25)]
    path = write_manifest(tmp_path / "data" / "manifest.jsonl", rows)
    stored = [json.loads(line) for line in path.read_text().splitlines()]
    assert [s["video"] for s in stored] == ["clips/a.mp4", "clips/b.mp4"]
    assert stored[0]["audio"] == "video" and stored[1]["audio"] == str(outside)
    assert read_manifest(path) == rows


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path):
    (tmp_path / "m").mkdir()
    path = write_lines(tmp_path / "m" / "manifest.jsonl", FACTUAL, "", COUNTERFACTUAL)  # blank lines are fine
    rows = read_manifest(path)
    assert rows[0].video == tmp_path / "m" / "clips" / "a.mp4"
    assert rows[0].audio_in_video and rows[0].audio_path == rows[0].video
    assert rows[1].counterfactual and rows[1].similarity == pytest.approx(0.31)


@pytest.mark.parametrize("line, field", [
    ("{not json", None),
    ("[1, 2]", None),
    ({k: v for k, v in FACTUAL.items() if k != "audio_captions"}, "audio_captions"),
    ({**FACTUAL, "video_captoin": "typo"}, "video_captoin"),
    ({**FACTUAL, "counterfactual": "yes"}, "counterfactual"),
    ({**FACTUAL, "audio_captions": "a dog barks"}, "audio_captions"),
    ({**FACTUAL, "audio_captions": ["ok", ""]}, "audio_captions"),
    ({**FACTUAL, "sample_id": ""}, "sample_id"),
    ({**FACTUAL, "video": 3}, "video"),
    ({**FACTUAL, "similarity": 0.5}, "similarity"),             # factual rows carry no pair fields
    ({**COUNTERFACTUAL, "audio_source": None}, "audio_source"),  # counterfactual rows need them
    ({**COUNTERFACTUAL, "similarity": "high"}, "similarity"),
    ('{"sample_id": "a", "video": "v", "audio": "video", "audio_captions": [], "counterfactual": true, '
     '"video_source": "x", "audio_source": "y", "similarity": NaN}', "similarity"),
])
def test_invalid_rows_raise_errors_naming_line_and_field(tmp_path, line, field):
    path = write_lines(tmp_path / "manifest.jsonl", FACTUAL | {"sample_id": "first"}, line)
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    message = str(info.value)
    assert "manifest.jsonl:2:" in message
    if field is not None:
        assert f"field '{field}'" in message
    assert isinstance(info.value, InputError)


def test_duplicate_sample_ids_name_both_lines(tmp_path):
    path = write_lines(tmp_path / "manifest.jsonl", FACTUAL, COUNTERFACTUAL, FACTUAL)
    with pytest.raises(ManifestError, match=r"manifest.jsonl:3: field 'sample_id': 'a' already used on line 1"):
        read_manifest(path)


def test_missing_manifest_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


def test_load_sample_reads_frames_and_the_chosen_sound(tmp_path):
    write_clip(tmp_path / "a.mp4", seconds=2.0, fps=10)
    write_clip(tmp_path / "silent.mp4", seconds=2.0, fps=10, with_audio=False)
    own = load_sample(ManifestRow("a", tmp_path / "a.mp4"), fps=2.0)
    assert own.frames.shape == (4, 48, 64, 3) and own.frames.dtype == np.uint8
    assert own.audio.dtype == np.float32 and abs(own.audio.size - 32000) < 2048
    # a separate sound file: the silent video gets the other clip's 440 Hz track
    other = load_sample(ManifestRow("s", tmp_path / "silent.mp4", tmp_path / "a.mp4"), fps=2.0)
    spectrum = np.abs(np.fft.rfft(other.audio[4000:20000]))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 16000 samples at 16 kHz: 1 Hz bins


def test_iter_samples_skips_missing_and_broken_files_and_reports_them(tmp_path):
    write_clip(tmp_path / "good.mp4", seconds=1.0)
    write_clip(tmp_path / "silent.mp4", seconds=1.0, with_audio=False)
    (tmp_path / "broken.mp4").write_bytes(b"\x00garbage" * 100)
    rows = [ManifestRow("missing", tmp_path / "missing.mp4"), ManifestRow("good", tmp_path / "good.mp4"),
            ManifestRow("broken", tmp_path / "broken.mp4"), ManifestRow("silent", tmp_path / "silent.mp4")]
    skipped: list[tuple[str, str]] = []
    samples = list(iter_samples(rows, fps=2.0, skipped=skipped))
    assert [s.sample_id for s in samples] == ["good"]
    assert [sid for sid, _ in skipped] == ["missing", "broken", "silent"]
    assert "not found" in skipped[0][1] and "broken.mp4" in skipped[1][1] and "no audio stream" in skipped[2][1]
