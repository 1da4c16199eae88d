"""The command line: every user mistake ends in one line saying what is wrong and what to do, and a non-zero exit;
--debug shows the traceback instead."""

from __future__ import annotations

import json

import pytest

from hooked_av import InputError
from hooked_av.cli import main
from hooked_av.data.jsonl import append_rows
from tests.test_media import write_clip


def run_main(argv, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    assert "Traceback" not in err
    errors = [line for line in lines if line.startswith("hooked-av: error: ")]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture
def manifest(tmp_path):
    write_clip(tmp_path / "a.mp4", seconds=1.0)
    path = tmp_path / "manifest.jsonl"
    append_rows(path, [{"sample_id": "a", "video": "a.mp4", "audio": "video", "audio_captions": ["a tone"],
                        "video_caption": "grey frames", "counterfactual": False}])
    return path


def test_a_missing_manifest(tmp_path, capsys):
    code, err = run_main(["caption", "--manifest", tmp_path / "nope.jsonl", "--out", tmp_path / "c.jsonl",
                          "--model", "tiny"], capsys)
    assert_one_line_error(code, err, "manifest not found", "nope.jsonl")


def test_a_malformed_manifest_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sample_id": "a"}\n')
    code, err = run_main(["build-counterfactuals", "--manifest", bad, "--out-dir", tmp_path / "set"], capsys)
    assert_one_line_error(code, err, "bad.jsonl:1: field 'video': missing")


def test_a_checkpoint_folder_that_does_not_exist(manifest, tmp_path, capsys):
    code, err = run_main(["caption", "--manifest", manifest, "--out", tmp_path / "c.jsonl",
                          "--model", tmp_path / "no_such_model"], capsys)
    assert_one_line_error(code, err, "no_such_model", "folder")


def test_a_captions_file_with_a_damaged_line(manifest, tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"sample_id": "a", "prompt": "p", "caption": "x"}\n{"sample_id": \n'
                        '{"sample_id": "a", "prompt": "q", "caption": "y"}\n')
    code, err = run_main(["judge", "--manifest", manifest, "--captions", captions, "--out", tmp_path / "s.jsonl",
                          "--backend", "openai", "--model", "m", "--base-url", "http://127.0.0.1:9/v1"], capsys)
    assert_one_line_error(code, err, "captions.jsonl:2")


def test_debug_shows_the_traceback_before_or_after_the_command(tmp_path):
    argv = ["caption", "--manifest", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "c.jsonl"),
            "--model", "tiny"]
    with pytest.raises(InputError, match="manifest not found"):
        main(["--debug", *argv])
    with pytest.raises(InputError, match="manifest not found"):
        main([*argv, "--debug"])


@pytest.mark.parametrize("command", ["demo", "caption"])
def test_an_unknown_dtype_is_refused(command, tmp_path, capsys):
    extra = ["--manifest", "m.jsonl", "--out", "o.jsonl", "--model", "tiny"] if command == "caption" else []
    with pytest.raises(SystemExit) as exit_info:
        main([command, *extra, "--dtype", "nonsense"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--dtype" in err and "nonsense" in err and "bfloat16" in err


def test_an_import_that_finds_none_of_the_clips_fails(tmp_path, capsys):
    (tmp_path / "clips").mkdir()
    (tmp_path / "test.csv").write_text("audiocap_id,youtube_id,start_time,caption\n1,abc,30,A dog barks\n")
    code, err = run_main(["audiocaps-import", "--csv", tmp_path / "test.csv", "--clips", tmp_path / "clips",
                          "--out", tmp_path / "m.jsonl"], capsys)
    assert_one_line_error(code, err, "none of the 1 clips", "--pattern")


def test_captioning_a_vision_only_model_with_sound_says_no_audio(vl, manifest, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("hooked_av.data.cli.load_model", lambda args: vl[2])
    argv = ["caption", "--manifest", manifest, "--out", tmp_path / "c.jsonl", "--model", "vl",
            "--max-new-tokens", "2", "--prompt", "Describe."]
    code, err = run_main(argv, capsys)
    assert_one_line_error(code, err, "--no-audio")
    assert run_main([*argv, "--no-audio"], capsys)[0] == 0
    assert json.loads((tmp_path / "c.jsonl").read_text())["use_audio"] is False


def test_a_run_where_every_sample_fails_exits_nonzero(tmp_path, capsys):
    path = tmp_path / "manifest.jsonl"
    append_rows(path, [{"sample_id": s, "video": f"{s}.mp4", "audio": "video", "audio_captions": ["x"],
                        "counterfactual": False} for s in ("gone1", "gone2")])
    code, err = run_main(["caption", "--manifest", path, "--out", tmp_path / "c.jsonl", "--model", "tiny",
                          "--max-new-tokens", "2"], capsys)
    assert_one_line_error(code, err, "every sample failed", "c.jsonl.errors.jsonl")


@pytest.mark.parametrize("argv", [
    ["judge", "--manifest", "m", "--captions", "c", "--out", "o", "--max-attempts", "0"],
    ["judge", "--manifest", "m", "--captions", "c", "--out", "o", "--timeout", "-1"],
    ["caption", "--manifest", "m", "--out", "o", "--model", "tiny", "--max-new-tokens", "0"],
    ["caption", "--manifest", "m", "--out", "o", "--model", "tiny", "--fps", "0"],
    ["build-counterfactuals", "--manifest", "m", "--out-dir", "o", "--k", "-3"],
])
def test_counts_and_durations_must_be_positive(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "must be positive" in capsys.readouterr().err


def test_a_server_backend_without_a_model(manifest, tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"sample_id": "a", "prompt": "p", "caption": "x"}\n')
    code, err = run_main(["judge", "--manifest", manifest, "--captions", captions, "--out", tmp_path / "s.jsonl",
                          "--backend", "openai"], capsys)
    assert_one_line_error(code, err, "--backend openai needs --model")


def test_a_judge_model_that_is_not_on_this_machine(manifest, tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"sample_id": "a", "prompt": "p", "caption": "x"}\n')
    code, err = run_main(["judge", "--manifest", manifest, "--captions", captions, "--out", tmp_path / "s.jsonl",
                          "--model", tmp_path / "no_judge"], capsys)
    assert_one_line_error(code, err, "no_judge", "local")


def test_an_output_path_that_is_a_folder(manifest, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("hooked_av.data.cli.load_model", lambda args: pytest.fail("checked after the model load"))
    code, err = run_main(["caption", "--manifest", manifest, "--out", tmp_path, "--model", "tiny"], capsys)
    assert_one_line_error(code, err, "is a folder")


def test_log_lines_are_written_through_tqdm_not_onto_a_bar(tmp_path, capsys, monkeypatch):
    import logging

    from tqdm import tqdm

    written = []
    monkeypatch.setattr(tqdm, "write", classmethod(lambda cls, s, file=None, end="\n", nolock=False:
                                                   written.append(s)))
    path = tmp_path / "manifest.jsonl"
    write_clip(tmp_path / "a.mp4", seconds=1.0)
    append_rows(path, [{"sample_id": s, "video": f"{s}.mp4", "audio": "video", "audio_captions": ["x"],
                        "counterfactual": False} for s in ("a", "gone")])
    handler = logging.StreamHandler()  # a console handler, as a user's logging setup has
    logging.root.addHandler(handler)
    try:
        code, err = run_main(["caption", "--manifest", path, "--out", tmp_path / "c.jsonl", "--model", "tiny",
                              "--max-new-tokens", "2", "--prompt", "Describe."], capsys)
    finally:
        logging.root.removeHandler(handler)
    assert code == 0 and "captioning: 100%" in err and "2/2" in err
    assert any("skipping sample gone" in line for line in written)
    assert "skipping sample gone" not in err  # only through tqdm.write


def test_a_missing_captions_or_scores_file_is_an_error_not_zero_rows(manifest, tmp_path, capsys):
    code, err = run_main(["judge", "--manifest", manifest, "--captions", tmp_path / "nope.jsonl",
                          "--out", tmp_path / "s.jsonl", "--backend", "openai", "--model", "m"], capsys)
    assert_one_line_error(code, err, "captions file not found", "nope.jsonl")
    (tmp_path / "h.csv").write_text("sample_id,modality,human_score\na,audio,0.5\n")
    code, err = run_main(["agreement", "--human", tmp_path / "h.csv", "--scores", tmp_path / "none.jsonl"], capsys)
    assert_one_line_error(code, err, "score file not found", "none.jsonl")


def test_ctrl_c_ends_in_one_line_and_status_130(tmp_path, capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("hooked_av.data.cli.check_manifest_cmd", interrupted)
    code, err = run_main(["check-manifest", tmp_path / "m.jsonl"], capsys)
    assert code == 130 and "Traceback" not in err and err.startswith("hooked-av: interrupted; run the same command")
