"""AudioCaps import: captions grouped per clip, clips found by file-name pattern, missing clips reported."""

from __future__ import annotations

import pytest

from hooked_av import InputError
from hooked_av.data.audiocaps import import_audiocaps, read_audiocaps_csv
from hooked_av.data.captioner import CaptionerError, ReviewedCaptions
from hooked_av.data.manifest import read_manifest
from tests.test_media import write_clip

CSV = """audiocap_id,youtube_id,start_time,caption
91139,r1nicOVtvkQ,130,A woman talks nearby as water pours
58146,UDGBjjwyaqE,20,Multiple clanging and clanking sounds
11542,-rgeh6Lb2L8,30,A dog barks and a man speaks
91140,r1nicOVtvkQ,130,Water trickles while a woman speaks
58147,UDGBjjwyaqE,20,Metal clanks repeatedly
91141,r1nicOVtvkQ,130,A woman speaks over running water
"""


@pytest.fixture
def audiocaps(tmp_path):
    (tmp_path / "audiocaps.csv").write_text(CSV)
    clips = tmp_path / "clips"
    clips.mkdir()
    write_clip(clips / "r1nicOVtvkQ_130.mp4", seconds=1.0)
    write_clip(clips / "-rgeh6Lb2L8_30.mp4", seconds=1.0)  # UDGBjjwyaqE_20 was never downloaded
    return tmp_path


def test_captions_are_grouped_per_clip_in_order_of_appearance(audiocaps):
    clips = read_audiocaps_csv([audiocaps / "audiocaps.csv"])
    assert [c.sample_id for c in clips] == ["r1nicOVtvkQ_130", "UDGBjjwyaqE_20", "-rgeh6Lb2L8_30"]
    assert clips[0].captions == ["A woman talks nearby as water pours", "Water trickles while a woman speaks",
                                 "A woman speaks over running water"]
    assert len(clips[1].captions) == 2 and len(clips[2].captions) == 1


def test_import_writes_factual_rows_and_reports_missing_clips(audiocaps, caplog):
    report = import_audiocaps([audiocaps / "audiocaps.csv"], audiocaps / "clips", audiocaps / "manifest.jsonl")
    assert [sid for sid, _ in report.missing] == ["UDGBjjwyaqE_20"]
    assert report.missing[0][1] == audiocaps / "clips" / "UDGBjjwyaqE_20.mp4"
    assert "UDGBjjwyaqE_20" in caplog.text
    rows = read_manifest(report.manifest)
    assert rows == report.rows
    assert [r.sample_id for r in rows] == ["r1nicOVtvkQ_130", "-rgeh6Lb2L8_30"]
    assert rows[0].video == audiocaps / "clips" / "r1nicOVtvkQ_130.mp4"
    assert all(r.audio_in_video and not r.counterfactual and r.video_caption is None for r in rows)
    assert len(rows[0].audio_captions) == 3
    assert '"video": "clips/r1nicOVtvkQ_130.mp4"' in report.manifest.read_text()  # portable: relative path


def test_file_name_pattern_is_a_parameter(audiocaps):
    (audiocaps / "by_id").mkdir()
    write_clip(audiocaps / "by_id" / "UDGBjjwyaqE.mp4", seconds=1.0)
    report = import_audiocaps([audiocaps / "audiocaps.csv"], audiocaps / "by_id", audiocaps / "m.jsonl",
                              pattern="{youtube_id}.mp4")
    assert [r.sample_id for r in report.rows] == ["UDGBjjwyaqE_20"]
    assert len(report.missing) == 2
    with pytest.raises(InputError, match="may use only"):
        import_audiocaps([audiocaps / "audiocaps.csv"], audiocaps / "by_id", audiocaps / "m.jsonl",
                         pattern="{ytid}.mp4")


class FrameCounter:
    """A captioner that describes the frames it got, to check what the importer passes."""

    def caption(self, sample_id, frames):
        if sample_id.startswith("-"):
            raise CaptionerError("the vision model refused")
        return f"{sample_id}: {frames.shape[0]} frames, mean level {frames.mean():.0f}"


def test_captioner_gets_the_clip_frames_and_failures_are_reported(audiocaps):
    report = import_audiocaps([audiocaps / "audiocaps.csv"], audiocaps / "clips", audiocaps / "manifest.jsonl",
                              captioner=FrameCounter(), caption_fps=4.0)
    # a 1 s, 10 fps clip sampled at 4 fps: frames 0, 3, 5, 8 (levels 0, 30, 50, 80; mean ~40)
    caption = report.rows[0].video_caption
    assert caption.startswith("r1nicOVtvkQ_130: 4 frames") and abs(int(caption.rsplit(" ", 1)[1]) - 40) <= 3
    assert report.rows[1].video_caption is None
    assert report.caption_errors == [("-rgeh6Lb2L8_30", "the vision model refused")]


def test_reviewed_captions_fill_video_captions(audiocaps):
    reviewed = audiocaps / "reviewed.csv"
    reviewed.write_text("sample_id,caption\nr1nicOVtvkQ_130,A woman at a sink.\n-rgeh6Lb2L8_30,A dog in a yard.\n")
    report = import_audiocaps([audiocaps / "audiocaps.csv"], audiocaps / "clips", audiocaps / "manifest.jsonl",
                              captioner=ReviewedCaptions(reviewed))
    assert [r.video_caption for r in read_manifest(report.manifest)] == ["A woman at a sink.", "A dog in a yard."]


def test_bad_csvs_are_input_errors(tmp_path):
    (tmp_path / "clips").mkdir()
    bad = tmp_path / "bad.csv"
    bad.write_text("youtube_id,caption\nabc,a dog\n")
    with pytest.raises(InputError, match="missing column\\(s\\) start_time"):
        read_audiocaps_csv([bad])
    bad.write_text("audiocap_id,youtube_id,start_time,caption\n1,abc,30,a dog\n2,abd,30,\n")
    with pytest.raises(InputError, match="bad.csv:3: empty"):
        read_audiocaps_csv([bad])
    with pytest.raises(InputError, match="clips folder not found"):
        import_audiocaps([bad], tmp_path / "nope", tmp_path / "m.jsonl")



def test_clips_without_sound_or_undecodable_are_reported_and_kept_out(audiocaps, caplog):
    write_clip(audiocaps / "clips" / "UDGBjjwyaqE_20.mp4", seconds=1.0, with_audio=False)
    (audiocaps / "clips" / "-rgeh6Lb2L8_30.mp4").write_bytes(b"\x00 not a video" * 40)
    report = import_audiocaps([audiocaps / "audiocaps.csv"], audiocaps / "clips", audiocaps / "manifest.jsonl",
                              captioner=FrameCounter())
    assert [r.sample_id for r in read_manifest(report.manifest)] == ["r1nicOVtvkQ_130"]
    assert [sid for sid, _ in report.bad_media] == ["UDGBjjwyaqE_20", "-rgeh6Lb2L8_30"]
    assert "has no audio stream" in report.bad_media[0][1] and "cannot decode" in report.bad_media[1][1]
    assert report.caption_errors == [] and "UDGBjjwyaqE_20" in caplog.text


def test_an_import_with_no_usable_clip_is_an_error(audiocaps):
    for clip in (audiocaps / "clips").iterdir():
        clip.write_bytes(b"broken")
    with pytest.raises(InputError, match="none of the 3 clips"):
        import_audiocaps([audiocaps / "audiocaps.csv"], audiocaps / "clips", audiocaps / "manifest.jsonl")
    assert not (audiocaps / "manifest.jsonl").exists()
