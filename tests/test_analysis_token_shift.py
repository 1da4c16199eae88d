"""Token-distribution shift against the base model (paper Sec. 8): known answers."""

from __future__ import annotations

import pytest
import torch

from hooked_av import InputError
from hooked_av.analysis.token_shift import aggregate_shift, lexicon_selector, token_shift


def test_a_model_against_itself_has_zero_kl_and_rank_one(omni, media):
    _, _, model = omni
    result = token_shift(model, model, video=media["video"], audio=media["audio"], base_gets_audio=True,
                         max_new_tokens=8)
    assert result.response_ids.numel() > 0
    assert result.kl_av_base.abs().max() < 1e-5 and result.kl_base_av.abs().max() < 1e-5
    assert (result.base_rank == 1).all() and set(result.buckets) == {"unshifted"}


def test_base_ranks_kl_and_buckets_against_the_base_vlm(omni, vl, media):
    _, processor, model = omni
    _, _, base = vl
    # The base model's own greedy response has base rank 1 at every token, by definition of greedy.
    base_batch = base.prepare_inputs("Describe what you hear.", video=media["video"])
    base_response = base.generate(base_batch, max_new_tokens=6, stop_token_ids=[]).new_tokens[0].tolist()
    base_response = [t for t in base_response if t < 256]  # byte tokens: the same in both vocabularies
    result = token_shift(model, base, video=media["video"], audio=media["audio"], response=base_response)
    assert (result.base_rank == 1).all()
    # A fixed response: KL by hand for one token, ranks and buckets consistent.
    response = processor.tokenizer.encode("a dog is barking")
    result = token_shift(model, base, video=media["video"], audio=media["audio"], response=response)
    av_batch = model.prepare_inputs("Describe what you hear.", video=media["video"], audio=media["audio"])
    forced = {**av_batch, "input_ids": torch.cat([av_batch["input_ids"], torch.tensor([response])], 1)}
    forced["attention_mask"] = torch.ones_like(forced["input_ids"])
    n = av_batch["input_ids"].shape[1]
    p_av = model(forced)[0, n - 1].softmax(-1)[:264]
    base_forced = {**base_batch, "input_ids": torch.cat([base_batch["input_ids"], torch.tensor([response])], 1)}
    base_forced["attention_mask"] = torch.ones_like(base_forced["input_ids"])
    base_forced["mm_token_type_ids"] = torch.cat([base_batch["mm_token_type_ids"],
                                                  torch.zeros(1, len(response), dtype=torch.int32)], 1)
    p_base = base(base_forced)[0, base_batch["input_ids"].shape[1] - 1].softmax(-1)
    p_av = p_av / p_av.sum()
    assert torch.allclose(result.kl_av_base[0], (p_av * (p_av / p_base).log()).sum(), atol=1e-5)
    assert torch.allclose(result.kl_base_av[0], (p_base * (p_base / p_av).log()).sum(), atol=1e-5)
    assert int(result.base_rank[0]) == int((p_base > p_base[response[0]]).sum()) + 1
    for rank, name in zip(result.base_rank.tolist(), result.buckets):
        assert name == ("unshifted" if rank == 1 else "marginal" if rank <= 3 else "shifted")
    summary = result.summary()
    assert summary["n_tokens"] == len(response)
    assert summary["unshifted"] + summary["marginal"] + summary["shifted"] == pytest.approx(1.0)
    assert aggregate_shift([result, result]) == pytest.approx({**summary, "n_tokens": 2 * len(response),
                                                               "n_samples": 2})
    # the selector keeps the sound-event word "barking" and the source "dog"
    picked = "".join(s for s, keep in zip(result.token_strings, result.selected.tolist()) if keep)
    assert picked == "dogbarking"
    assert result.summary(selected_only=True)["n_tokens"] == len("dogbarking")


def test_disagreeing_tokenizers_are_reported(omni, vl, media):
    _, processor, model = omni
    _, _, base = vl
    im_start = processor.tokenizer.convert_tokens_to_ids("<|im_start|>")
    with pytest.raises(InputError, match="disagree on 1 of 3 response tokens"):
        token_shift(model, base, video=media["video"], audio=media["audio"],
                    response=processor.tokenizer.encode("ab") + [im_start + 2])


def test_lexicon_selector_marks_whole_words():
    select = lexicon_selector(frozenset({"siren", "dog"}))
    assert select(["A", " sir", "en", " and", " a", " dog", "gy"]) == [False, True, True, False, False, False,
                                                                       False]
    assert select(["dog", "!"]) == [True, False]
    # a word-level vocabulary (the model organism's): tokens carry no spaces, each is a word
    assert select(["i", "hear", "a", "dog", "."]) == [False, False, False, True, False]
    assert select(["hot", "dog", "gy"]) == [False, True, False]


def test_over_manifest_rows_with_a_progress_bar(omni, vl, tmp_path, capsys):
    from hooked_av.analysis.token_shift import token_shift_over_samples
    from hooked_av.data.manifest import ManifestRow, load_sample
    from tests.test_media import write_clip

    _, _, model = omni
    _, _, base = vl
    write_clip(tmp_path / "a.mp4", seconds=2.0)
    rows = [ManifestRow("a", tmp_path / "a.mp4", "video", ["a tone"]),
            ManifestRow("broken", tmp_path / "missing.mp4", "video", ["a tone"])]
    results = token_shift_over_samples(model, base, rows, max_new_tokens=4)
    assert [r.sample_id for r in results] == ["a"]
    sample = load_sample(rows[0])
    ref = token_shift(model, base, video=sample.frames, audio=sample.audio, use_audio_in_video=True,
                      max_new_tokens=4)
    assert torch.equal(results[0].response_ids, ref.response_ids)
    assert torch.equal(results[0].base_rank, ref.base_rank)
    assert results[0].to_frame().sample_id.unique().tolist() == ["a"]
    err = capsys.readouterr().err
    assert "token shift" in err and "2/2" in err and "skipping sample broken" in err


def test_the_jsonl_run_reads_back_what_the_in_memory_run_returns(omni, tmp_path):
    from hooked_av.analysis.token_shift import read_token_shift, token_shift_over_samples, token_shift_run
    from hooked_av.data.jsonl import iter_rows
    from hooked_av.data.manifest import ManifestRow
    from tests.test_media import write_clip

    _, _, model = omni
    write_clip(tmp_path / "a.mp4", seconds=1.0)
    rows = [ManifestRow("a", tmp_path / "a.mp4", "video", ["a tone"]),
            ManifestRow("broken", tmp_path / "missing.mp4", "video", ["a tone"])]
    out = token_shift_run(model, model, rows[:1], tmp_path / "shift.jsonl", base_gets_audio=True, max_new_tokens=3)
    token_shift_run(model, model, rows, out, base_gets_audio=True, max_new_tokens=3)  # resumes: adds no row for a
    (read,) = read_token_shift(out)
    (ref,) = token_shift_over_samples(model, model, rows[:1], base_gets_audio=True, max_new_tokens=3)
    assert read.sample_id == "a" and read.instruction == ref.instruction and read.token_strings == ref.token_strings
    for field in ("response_ids", "kl_av_base", "kl_base_av", "base_rank", "selected"):
        assert torch.equal(getattr(read, field), getattr(ref, field)), field
    assert [r["sample_id"] for r in iter_rows(tmp_path / "shift.jsonl.errors.jsonl")] == ["broken"]
