"""The modality map: per position, what it is; right under padding, batching and audio-in-video interleaving."""

from __future__ import annotations

import torch

from hooked_av import HookedAVModel, Modality

from .conftest import PROMPT


def test_placeholders_specials_template_and_prompt_text(omni, omni_batches):
    _, processor, model = omni
    tok = processor.tokenizer
    batch = omni_batches["audio+video"]
    mm = model.modality_map(batch)
    ids = batch["input_ids"][0]
    assert torch.equal(mm.mask("video")[0], ids == tok.convert_tokens_to_ids("<|VIDEO|>"))
    assert torch.equal(mm.mask("audio")[0], ids == tok.convert_tokens_to_ids("<|AUDIO|>"))
    special = {tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<|vision_bos|>",
                                                       "<|vision_eos|>", "<|audio_bos|>", "<|audio_eos|>")}
    assert set(ids[mm.mask("special")[0]].tolist()) == special
    # The prompt text is exactly the user's words; the system prompt and role headers are template.
    assert tok.decode(ids[mm.mask("text")[0]]) == PROMPT
    template = tok.decode(ids[mm.mask("template")[0]])
    assert "You are a helpful assistant." in template and "user\n" in template and "assistant\n" in template
    counts = mm.counts()
    assert sum(counts.values()) == ids.numel() and "pad" not in counts


def test_audio_in_video_interleaving_follows_two_second_chunks(omni, omni_batches):
    _, _, model = omni
    runs = model.modality_map(omni_batches["use_audio_in_video"]).runs()
    av = [(name, n) for name, n in runs if name in ("video", "audio")]
    # 4 s at 2 fps: 2 temporal grids of 144 tokens per 2 s chunk, 50 audio tokens per 2 s (25 Hz).
    assert av == [("video", 288), ("audio", 50), ("video", 288), ("audio", 50)]


def test_left_padding_in_a_batch(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["padded_batch"]
    mm = model.modality_map(batch)
    n_pad = int((batch["attention_mask"][1] == 0).sum())
    assert n_pad > 0
    assert mm.runs(1)[0] == ("pad", n_pad) and mm.counts(0).get("pad", 0) == 0
    assert mm.counts(1)["video"] == 288 and mm.counts(1)["audio"] == 50
    assert mm.counts(0)["video"] == 576 and mm.counts(0)["audio"] == 100
    assert mm.positions("audio", 1).min() > n_pad


def test_generated_positions_extend_the_map(omni, omni_batches):
    _, _, model = omni
    batch = omni_batches["text"]
    out = model.generate(batch, max_new_tokens=4, stop_token_ids=[])
    assert out.modality_map.runs()[-1] == ("generated", 4)
    assert torch.equal(out.modality_map.codes[:, :out.prompt_length], model.modality_map(batch).codes)


def test_without_a_processor_special_ids_come_from_the_config(omni, omni_batches):
    hf_model, processor, _ = omni
    bare = HookedAVModel.from_hf_model(hf_model)
    batch = omni_batches["audio+video"]
    mm = bare.modality_map(batch)
    ids = batch["input_ids"][0]
    assert torch.equal(mm.mask("audio")[0], ids == hf_model.config.audio_token_id)
    bos = processor.tokenizer.convert_tokens_to_ids("<|vision_bos|>")
    assert bool(mm.mask("special")[0][ids == bos].all())
    assert Modality.TEMPLATE not in mm.codes  # no tokenizer: role headers cannot be told from prompt text


def test_raw_text_without_chat_template_is_all_prompt_text(omni):
    _, processor, model = omni
    ids = torch.tensor([processor.tokenizer.encode("just some words")])
    assert model.modality_map(ids).counts() == {"text": ids.shape[1]}
