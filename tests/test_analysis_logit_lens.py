"""Logit lens (paper Sec. 6): the last layer is the model's own output; words are readable and filtered."""

from __future__ import annotations

import torch

from hooked_av.analysis.logit_lens import LogitLensResult, decode_tokens, is_junk_token, logit_lens


def test_last_layer_equals_the_models_own_logits(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["audio+video"]
    result = logit_lens(model, batch, top_k=4)
    audio = model.modality_map(batch).positions("audio")
    assert torch.equal(result.positions, audio.cpu())
    assert result.top_ids.shape == (model.cfg.n_layers, audio.numel(), 4)
    probs = model(batch)[0, audio].softmax(-1)
    top = probs.topk(4, dim=-1)
    assert torch.equal(result.top_ids[-1], top.indices.cpu())
    assert torch.allclose(result.top_probs[-1], top.values.cpu(), atol=1e-5)
    # earlier layers decode the residual after that block through the same final norm and unembedding
    _, cache = model.run_with_cache(batch, names_filter="blocks.0.hook_resid_post")
    layer0 = model.unembed(model.ln_final(cache["blocks.0.hook_resid_post"]))[0, audio].softmax(-1)
    assert torch.equal(result.top_ids[0, :, 0], layer0.argmax(-1).cpu())


def test_from_a_cache_and_for_every_row_of_a_batch(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["padded_batch"]
    _, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_resid_post"))
    rows = logit_lens(model, cache=cache, positions="video", batch_index=None, top_k=2)
    assert len(rows) == 2 and rows[1].batch_index == 1
    assert len(rows[0].positions) == 576 and len(rows[1].positions) == 288
    assert torch.equal(rows[0].top_ids, logit_lens(model, batch, positions="video", top_k=2).top_ids)
    explicit = logit_lens(model, cache=cache, positions=[5, 7], layers=[-1], top_k=1)
    assert explicit.layers == [model.cfg.n_layers - 1] and explicit.top_ids.shape == (1, 2, 1)


def test_tokens_decode_to_readable_text(omni):
    _, processor, _ = omni
    tok = processor.tokenizer
    ids = torch.tensor([tok.encode(" dog"), tok.encode(" cat")])
    assert decode_tokens(tok, ids) == [[" ", "d", "o", "g"], [" ", "c", "a", "t"]]
    bytes_of_cjk = torch.tensor(tok.encode("键"))  # three byte tokens: each alone is a fragment
    assert all(is_junk_token(t) for t in decode_tokens(tok, bytes_of_cjk))
    assert tok.decode(bytes_of_cjk.tolist()) == "键"


def test_a_multibyte_token_decodes_to_its_characters():
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    # a byte-level BPE vocabulary in which 键盘 (six UTF-8 bytes) is merged into one token, as in Qwen's
    to_symbol = bytes_to_unicode()
    vocab = {ch: i for i, ch in enumerate(to_symbol.values())}
    symbols = [to_symbol[b] for b in "键盘".encode()]
    merges, merged = [], symbols[0]
    for symbol in symbols[1:]:
        merges.append((merged, symbol))
        merged += symbol
        vocab[merged] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None)
    ids = torch.tensor([tok.encode("键盘") + tok.encode(" typing")])
    assert ids.shape[1] == 8 and ids[0, 0] == vocab[merged]  # one token for 键盘, one per byte for the rest
    strings = decode_tokens(tok, ids)[0]
    assert strings[0] == "键盘" and "".join(strings[1:]) == " typing"
    assert not is_junk_token(strings[0])


def test_junk_filter_and_word_set():
    assert not is_junk_token("键盘") and not is_junk_token(" typing") and not is_junk_token("马")
    for junk in ("", "  ", "\n", "!!", "，", "\ufffd", "a\ufffd", "<|im_end|>", "...", "\x00"):
        assert is_junk_token(junk), repr(junk)
    tokens = [[["键盘", "x"], [" typing", "y"]], [["!!", "z"], ["\ufffd", "w"]], [[" drill", "q"], ["键盘", "r"]]]
    result = LogitLensResult(layers=[0, 1, 2], positions=torch.tensor([3, 4]), top_ids=torch.zeros(3, 2, 2).long(),
                             top_probs=torch.zeros(3, 2, 2), tokens=tokens)
    assert result.words(last_layers=3) == ["键盘", "typing", "drill"]
    assert result.words(last_layers=1) == ["drill", "键盘"]
    assert result.words(last_layers=1, top_k=2) == ["drill", "q", "键盘", "r"]
    assert result.top1() == [["键盘", " typing"], ["!!", "\ufffd"], [" drill", "键盘"]]
    frame = result.to_frame()
    assert len(frame) == 12 and set(frame.columns) >= {"layer", "position", "rank", "token", "prob"}


def test_latent_word_sets_are_written_resumably_and_scored_by_the_judge(omni, tmp_path, capsys):
    import json

    import pytest

    from hooked_av import InputError
    from hooked_av.analysis.logit_lens import latent_words_run
    from hooked_av.data.jsonl import append_rows, iter_rows
    from hooked_av.data.manifest import ManifestRow, load_sample
    from hooked_av.eval import Judge, load_scores, score_captions
    from tests.test_media import write_clip

    _, _, model = omni
    write_clip(tmp_path / "a.mp4", seconds=2.0)
    rows = [ManifestRow("s1", tmp_path / "a.mp4", "video", ["a tone"]),
            ManifestRow("broken", tmp_path / "missing.mp4", "video", ["a tone"])]
    with pytest.raises(InputError, match="sample_id 's1' is used by 2 samples"):
        latent_words_run(model, [rows[0], rows[0]], tmp_path / "words.jsonl")
    out = latent_words_run(model, rows[:1], tmp_path / "words.jsonl", last_layers=2)
    latent_words_run(model, rows, out, last_layers=2)  # a rerun adds only what is missing
    (row,) = list(iter_rows(out))
    sample = load_sample(rows[0])
    batch = model.prepare_inputs("Describe what you see and hear.", video=sample.frames, audio=sample.audio,
                                 use_audio_in_video=True)
    expected = logit_lens(model, batch, top_k=1).words(last_layers=2)
    assert row["sample_id"] == "s1" and row["words"] == expected
    from hooked_av.data.checkpoint import weights_sha256
    assert row["model_hash"] == weights_sha256(model.adapter.hf_model)  # the judge's score key holds it
    assert "broken" in (tmp_path / "words.jsonl.errors.jsonl").read_text()
    assert "latent words" in capsys.readouterr().err

    class Recorder:
        name = "recorder"
        prompts: list[str] = []

        def complete(self, prompts):
            self.prompts.extend(prompts)
            return [json.dumps({"reasoning": "r", "score": 0.5})] * len(prompts)

    manifest = tmp_path / "manifest.jsonl"
    append_rows(manifest, [{"sample_id": "s1", "video": "s1.mp4", "audio": "video",
                            "audio_captions": ["a tone plays", "a beep"], "counterfactual": False}])
    backend = Recorder()
    score_captions(manifest, out, tmp_path / "latent.jsonl", Judge(backend), modalities=("latent_audio",))
    (score,) = load_scores(tmp_path / "latent.jsonl")
    assert score["modality"] == "latent_audio" and score["score"] == 0.5
    assert backend.prompts[0].endswith(f"Decoded words: {', '.join(expected) or '(empty)'}\nAnswer:")
    assert "a tone plays" in backend.prompts[0]


def test_positions_outside_the_sequence_are_a_typed_error(omni, omni_batches):
    import pytest

    from hooked_av import InputError

    _, _, model = omni
    batch = omni_batches["audio"]
    n = batch["input_ids"].shape[1]
    with pytest.raises(InputError, match=f"position 10000 .* {n} positions"):
        logit_lens(model, batch, positions=[3, 10000])
    with pytest.raises(InputError, match="position -1"):
        logit_lens(model, batch, positions=[-1])
