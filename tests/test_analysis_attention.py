"""Attention by modality (paper Sec. 5): known answers on tiny models."""

from __future__ import annotations

import torch

from hooked_av import HookedAVModel
from hooked_av.analysis.attention import DEFAULT_GROUPS, aggregate_attention, attention_by_modality, group_index
from hooked_av.testing.tiny import tiny_omni_thinker

from .analysis_checks import assert_shares_match_a_full_forward


def test_shares_sum_to_one_and_match_a_hand_computation(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["audio+video"]
    result = attention_by_modality(model, batch, max_new_tokens=6, stop_token_ids=[])
    assert result.n_queries == 5  # 6 generated tokens, the last one is never fed back
    assert_shares_match_a_full_forward(model, batch, result, DEFAULT_GROUPS, n_queries=5)


def test_uniform_attention_gives_position_count_fractions(omni_batches):
    hf_model, processor = tiny_omni_thinker(seed=3)
    for layer in hf_model.model.language_model.layers:  # q = k = 0: every visible key gets the same weight
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
            torch.nn.init.zeros_(proj.weight)
            torch.nn.init.zeros_(proj.bias)
    model = HookedAVModel.from_hf_model(hf_model, processor)
    batch = omni_batches["audio+video"]
    result = attention_by_modality(model, batch, max_new_tokens=4, stop_token_ids=[])
    codes = model.modality_map(batch).codes[0]
    n = codes.numel()
    counts = {name: int((codes == code).sum()) for name, code in (("video", 5), ("audio", 6), ("text", 1))}
    for name, count in counts.items():
        expected = sum(count / (n + step + 1) for step in range(3))  / 3  # queries at n, n+1, n+2
        assert torch.allclose(result.share(name), torch.full((model.cfg.n_layers,), expected), atol=1e-5), name


def test_padded_batch_and_stops_count_only_real_queries(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["padded_batch"]
    result = attention_by_modality(model, batch, max_new_tokens=8)
    out = model.generate(batch, max_new_tokens=8)
    stops = set(model.adapter.stop_token_ids())
    expected = 0
    for row in out.new_tokens.tolist():
        for t in row[:-1]:  # the last generated token is never fed back
            if t in stops:
                break
            expected += 1
    assert result.n_queries == expected
    assert result.group_sizes[1]["video"] == 288 and result.group_sizes[0]["video"] == 576


def test_aggregate_gives_mean_and_a_band_around_it(omni, omni_batches):
    _, _, model = omni
    results = [attention_by_modality(model, omni_batches[c], max_new_tokens=4, stop_token_ids=[])
               for c in ("audio+video", "use_audio_in_video", "video")]
    agg = aggregate_attention(results)
    shares = torch.stack([r.shares for r in results]).numpy()
    assert agg.n_samples == 3
    assert (abs(agg.mean - shares.mean(0)) < 1e-6).all()
    assert (agg.ci_low <= agg.mean + 1e-9).all() and (agg.mean <= agg.ci_high + 1e-9).all()


def test_a_custom_stop_token_and_what_follows_are_not_queries(omni, media):
    """Reference: each row alone, teacher-forced over the tokens it fed back before its stop token; the pattern
    rows of those positions, summed per group, pooled over both rows."""
    from hooked_av.model.modality import Modality
    from tests.conftest import PROMPT

    _, _, model = omni
    prompts, videos, audios = [PROMPT, "What do you hear?"], [media["video"], media["video2"]], \
        [media["audio"], media["audio2"]]
    batch = model.prepare_inputs(prompts, video=videos, audio=audios)
    free = model.generate(batch, max_new_tokens=8, stop_token_ids=[]).new_tokens
    stop = int(free[1, 4])  # row 1 stops after 4 queries; row 0 goes on while row 1 is padded
    assert stop not in free[0].tolist() and stop not in free[1, :4].tolist()
    result = attention_by_modality(model, batch, max_new_tokens=8, stop_token_ids=[stop])
    new = model.generate(batch, max_new_tokens=8, stop_token_ids=[stop]).new_tokens
    groups = {"video": ("video",), "audio": ("audio",), "image": ("image",), "text": ("text",)}
    total, n_queries = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, 5), 0
    for r in range(2):
        row = new[r].tolist()
        fed_back = row.index(stop) if stop in row else len(row) - 1
        single = model.prepare_inputs(prompts[r], video=videos[r], audio=audios[r])
        n = single["input_ids"].shape[1]
        ids = torch.cat([single["input_ids"], new[r:r + 1, :fed_back]], dim=1)
        _, cache = model.run_with_cache({**single, "input_ids": ids, "attention_mask": torch.ones_like(ids)},
                                        names_filter=lambda name: name.endswith("hook_pattern"))
        codes = torch.cat([model.modality_map(single).codes[0], torch.full((fed_back,), int(Modality.GENERATED))])
        key_group = group_index(codes, groups)
        for layer in range(model.cfg.n_layers):
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, n:n + fed_back]  # [head, query, key]
            total[layer] += torch.stack([pattern[..., key_group == g].sum(-1) for g in range(5)], -1).sum(1)
        n_queries += fed_back
    assert result.n_queries == n_queries == 7 + 4
    assert torch.allclose(result.per_head, total / n_queries, atol=1e-4)


def test_over_manifest_rows_with_a_progress_bar(omni, tmp_path, capsys):
    from hooked_av.analysis.attention import attention_over_samples
    from hooked_av.data.manifest import ManifestRow, load_sample, sample_inputs
    from tests.test_media import write_clip

    _, _, model = omni
    write_clip(tmp_path / "a.mp4", seconds=2.0)
    rows = [ManifestRow("a", tmp_path / "a.mp4", "video", ["a tone"]),
            ManifestRow("broken", tmp_path / "missing.mp4", "video", ["a tone"])]
    results = attention_over_samples(model, rows, prompt="Describe.", max_new_tokens=3, stop_token_ids=[])
    assert [r.sample_id for r in results] == ["a"]
    batch = model.prepare_inputs("Describe.", **sample_inputs(load_sample(rows[0])))
    ref = attention_by_modality(model, batch, max_new_tokens=3, stop_token_ids=[])
    assert torch.equal(results[0].per_head, ref.per_head)
    err = capsys.readouterr().err
    assert "attention by modality" in err and "2/2" in err and "skipping sample broken" in err


def test_the_jsonl_run_reads_back_what_the_in_memory_run_returns(omni, tmp_path):
    from hooked_av.analysis.attention import attention_over_samples, attention_run, read_attention
    from hooked_av.data.jsonl import iter_rows
    from hooked_av.data.manifest import ManifestRow
    from tests.test_media import write_clip

    _, _, model = omni
    write_clip(tmp_path / "a.mp4", seconds=1.0)
    rows = [ManifestRow("a", tmp_path / "a.mp4", "video", ["a tone"])]
    out = attention_run(model, rows, tmp_path / "attention.jsonl", max_new_tokens=3)
    attention_run(model, rows, out, max_new_tokens=3)  # done: nothing appended
    assert len(list(iter_rows(out))) == 1
    (read,) = read_attention(out)
    (ref,) = attention_over_samples(model, rows, max_new_tokens=3)
    assert torch.equal(read.per_head, ref.per_head) and read.per_head.dtype == torch.float32
    assert (read.groups, read.layers, read.group_sizes, read.n_queries, read.generated_text, read.sample_id) == \
        (ref.groups, ref.layers, ref.group_sizes, ref.n_queries, ref.generated_text, "a")
