"""The model organism: a deterministic world, real HF tokenizer/processor/model classes, training that learns,
the shipped checkpoints (loading, faithfulness, behaviour) and the exported test set (Algorithm 1)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hooked_av import HookedAVModel, InputError
from hooked_av.organism import shipped_organism, shipped_twin, world
from hooked_av.organism.measure import generate_texts, names_sound
from hooked_av.organism.model import build_organism, build_twin
from hooked_av.organism.testset import (ClassEmbedder, counterfactual_clips, export_testset, in_memory,
                                        load_manifest_samples)
from hooked_av.organism.train import TYPES, BatchBuilder, TrainConfig, train
from hooked_av.organism.vocab import WORDS


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tests run many small forward passes: on a busy 2-core machine two OpenMP threads made them ten
    times slower than one (oversubscription), so this module uses one and restores the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_world_items_are_deterministic_per_seed_split_and_index():
    a = world.video_item(0, "test", "dog", 3)
    assert np.array_equal(a, world.video_item(0, "test", "dog", 3))
    assert not np.array_equal(a, world.video_item(1, "test", "dog", 3))
    assert not np.array_equal(a, world.video_item(0, "train", "dog", 3))
    assert not np.array_equal(a, world.video_item(0, "test", "dog", 4))
    s = world.audio_item(0, "test", "dog", 3)
    assert s.dtype == np.float32 and s.shape == (32000,) and np.abs(s).max() <= 0.9 + 1e-6
    assert np.array_equal(s, world.audio_item(0, "test", "dog", 3))
    assert not np.array_equal(s, world.audio_item(0, "test", "cat", 3))
    assert counterfactual_clips(16) == counterfactual_clips(16)
    assert all(c.counterfactual for c in counterfactual_clips(16))


def test_omni_and_vl_tokenizers_share_every_word_id():
    omni, vl = build_organism(0)[1].tokenizer, build_twin(0)[1].tokenizer
    caption = world.caption_both("clock", "tick") + "<|im_end|>"
    ids = omni(caption, add_special_tokens=False).input_ids
    assert ids == vl(caption, add_special_tokens=False).input_ids and len(ids) == 11
    assert omni.decode(ids, skip_special_tokens=True) == "i see a clock . i hear a tick ."
    for word in WORDS + ("<|im_end|>",):
        assert omni.convert_tokens_to_ids(word) == vl.convert_tokens_to_ids(word)
    assert omni("Describe what you see and hear.").input_ids == [12, 13, 7, 14, 15, 16, 11]
    assert omni("a zebra").input_ids == [9, omni.pad_token_id]  # unknown words map to <|endoftext|>


@pytest.fixture(scope="module")
def random_organism():
    torch.manual_seed(0)
    hf_model, processor = build_organism(0)
    return hf_model.eval(), HookedAVModel.from_hf_model(hf_model, processor)


@pytest.mark.parametrize("name", ["av_both", "a_hear", "v_see"])
def test_training_batches_equal_the_librarys_own_inputs(random_organism, name):
    """The model is trained on exactly what prepare_inputs gives the analyses (same ids, media, positions)."""
    hf_model, hooked = random_organism
    stype = TYPES[name]
    rows = [("dog", 3, 4), ("bell", 5, 6)]
    inputs, answers = BatchBuilder(hooked, world_seed=0).build(stype, rows)
    with torch.no_grad():
        logits = hf_model(**inputs).logits
    for i, (obj, v, a) in enumerate(rows):
        batch = hooked.prepare_inputs(
            stype.prompt, video=world.video_item(0, "train", obj, v) if stype.video else None,
            audio=world.audio_item(0, "train", obj, a) if stype.audio else None, fps=world.FPS,
            use_audio_in_video=stype.audio_in_video)
        n = batch["input_ids"].shape[1]
        assert torch.equal(inputs["input_ids"][i, :n], batch["input_ids"][0])
        with torch.no_grad():
            torch.testing.assert_close(logits[i, :n], hooked(batch)[0], atol=1e-5, rtol=1e-5)
    assert answers.shape == (2, len(stype.caption("dog").split()) + 1)


def test_a_short_training_run_lowers_the_loss():
    summary = train(TrainConfig(seed=0, steps=12, batch_size=8, warmup=2), log_every=4, log=lambda line: None)
    losses = [h["loss"] for h in summary["history"]]
    assert losses[-1] < losses[0] - 0.3, losses


def test_the_training_script_follows_the_shipped_checkpoints_recorded_run():
    """The first 50 steps of the shipped organism's own config give the loss its training.json recorded, to the
    bit (the whole 1200-step run was checked to give the shipped safetensors byte for byte: docs/organism.md)."""
    recorded = json.loads((shipped_organism() / "training.json").read_text())
    summary = train(TrainConfig(**{**recorded["config"], "betas": tuple(recorded["config"]["betas"])}),
                    log=lambda line: None, stop_after=50)
    assert summary["history"][0]["loss"] == recorded["history"][0]["loss"]


@pytest.fixture(scope="module")
def organism():
    return HookedAVModel.from_pretrained(shipped_organism())


def test_shipped_organism_loads_and_its_hooked_logits_equal_hf(organism):
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    hf_model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(shipped_organism(),
                                                                        local_files_only=True).eval()
    sample = in_memory(counterfactual_clips(1))[0]
    batch = organism.prepare_inputs(world.PROMPT_BOTH, video=sample.frames, audio=sample.audio,
                                    use_audio_in_video=True, fps=world.FPS)
    assert (batch["input_ids"] == organism.processor.tokenizer.convert_tokens_to_ids("<|VIDEO|>")).sum() == 32
    assert (batch["input_ids"] == organism.processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")).sum() == 50
    with torch.no_grad():
        ours, cache = organism.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_resid_post"))
        theirs = hf_model(**{k: v for k, v in batch.items()}).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert len(cache.modality_map.positions("audio")) == 50


def test_shipped_organism_hears_held_out_factual_clips(organism):
    """Behavioural regression: with picture and sound agreeing, it names the sound of unseen clips."""
    samples = in_memory(world.factual_clips(16))
    texts = generate_texts(organism, samples, world.PROMPT_HEAR)
    assert all(t.startswith("i hear a ") for t in texts), texts
    assert sum(names_sound(t, s.true_sound) for t, s in zip(texts, samples)) >= 15, texts


def test_shipped_twin_is_a_qwen2_5_vl_that_sees():
    twin = HookedAVModel.from_pretrained(shipped_twin())
    assert type(twin.adapter.hf_model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    samples = in_memory(world.factual_clips(8))
    texts = generate_texts(twin, samples, world.PROMPT_SEE, audio=False)
    assert sum(f"i see a {s.video_obj} ." == t for t, s in zip(texts, samples)) >= 7, texts


@pytest.fixture(scope="module")
def exported_set(tmp_path_factory):
    return export_testset(tmp_path_factory.mktemp("organism") / "set", n=8)


def test_exported_test_set_is_a_manifest_built_by_algorithm_1(exported_set):
    manifest = exported_set
    factual = load_manifest_samples(manifest, counterfactual=False)
    cf = load_manifest_samples(manifest, counterfactual=True)
    assert len(factual) == len(cf) == 8
    assert all(s.video_obj == s.audio_obj for s in factual)
    assert all(s.video_obj != s.audio_obj for s in cf)  # the least-similar assignment never keeps a clip's sound
    rendered = {s.sample_id: s for s in in_memory(world.factual_clips(8))}
    for s in factual:
        assert np.array_equal(s.frames, rendered[s.sample_id].frames)  # lossless video
        assert s.audio.shape == (32000,)  # the AAC padding is cut at the declared duration
        assert np.corrcoef(s.audio, rendered[s.sample_id].audio)[0, 1] > 0.9  # AAC-coded, not shifted (~0 if so)
    assert export_testset(manifest.parent.parent, n=8) == manifest  # reused, not rebuilt


def test_measures_fig6_sweeps_the_test_sets_rows(organism, exported_set):
    """Fig. 6 of `measure` runs the library's knockout_sweep over the exported rows: its unblocked answers are the
    organism's own greedy answers, every window of both sources is scored, and in-memory samples are refused."""
    from hooked_av.organism.measure import fig6

    cf = load_manifest_samples(exported_set, limit=3, counterfactual=True)
    factual = load_manifest_samples(exported_set, limit=2, counterfactual=False)
    result = fig6(organism, cf, factual)
    heard = generate_texts(organism, cf, world.PROMPT_HEAR)
    assert result["cf"]["none"] == pytest.approx(np.mean([names_sound(t, s.true_sound) for t, s in zip(heard, cf)]))
    for setting in ("cf", "factual"):
        assert sorted(result[setting]["video"]) == sorted(result[setting]["audio"]) == list(range(6))
    assert result["cf"]["video_layers"][0] == [0, 1] and result["cf"]["video_layers"][3] == [2, 3, 4]
    assert max(result["cf"]["audio"].values()) <= result["cf"]["none"]  # blocking the sound never helps hearing
    with pytest.raises(InputError, match="manifest rows"):
        fig6(organism, in_memory(counterfactual_clips(1)), [])


def test_class_embedder_maps_a_sound_to_its_source():
    e = ClassEmbedder().encode(["a dog", "a bark", "a chime"])
    assert e[0] @ e[1] == pytest.approx(1.0) and e[0] @ e[2] == 0.0


def test_measure_finds_the_planted_bias_on_the_shipped_pair(organism):
    """Regression of the headline figures on a few held-out counterfactual clips (in memory): the organism hears
    alone, answers from the picture when both disagree, recovers when generated tokens may not see the video, and
    its picture-driven sound words are the twin's top choice while its heard ones are not."""
    from hooked_av.organism.measure import all_layer_knockouts, fig7

    cf = in_memory(counterfactual_clips(12))
    heard = generate_texts(organism, cf, world.PROMPT_HEAR)
    alone = generate_texts(organism, cf, world.PROMPT_HEAR, video=False)
    fidelity = np.mean([names_sound(t, s.true_sound) for t, s in zip(heard, cf)])
    assert np.mean([names_sound(t, s.true_sound) for t, s in zip(alone, cf)]) >= 0.75
    assert fidelity <= 0.5
    assert np.mean([names_sound(t, s.picture_sound) for t, s in zip(heard, cf)]) >= 0.4
    blocked = all_layer_knockouts(organism, cf)
    assert blocked["cf_audio_fidelity_video_blocked"] >= fidelity + 0.25
    assert blocked["cf_audio_fidelity_audio_blocked"] <= 0.1
    shift = fig7(organism, HookedAVModel.from_pretrained(shipped_twin()), cf[:8], [])["cf"]
    assert shift["function_words"]["unshifted"] >= 0.95
    assert shift["picture_sound_words"].get("unshifted", 1.0) >= 0.75


def test_training_is_deterministic_for_a_seed(tmp_path):
    from safetensors.torch import load_file

    cfg = TrainConfig(seed=3, steps=3, batch_size=4, warmup=1)
    for run in ("a", "b"):
        train(cfg, tmp_path / run, log=lambda line: None)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = load_file(train(TrainConfig(seed=4, steps=3, batch_size=4, warmup=1), tmp_path / "c",
                            log=lambda line: None) and tmp_path / "c" / "model.safetensors")
    assert not torch.equal(a["lm_head.weight"], other["lm_head.weight"])
