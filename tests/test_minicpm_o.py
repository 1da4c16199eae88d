"""MiniCPM-o 2.6 against the official implementation's outputs (tests/fixtures/minicpmo_2_6_tiny, produced by
OpenBMB's own code), through the public API only: from_pretrained on the official folder layout,
prepare_inputs(messages=...) on the raw inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from hooked_av import HookedAVModel, InputError, UnsupportedCheckpointError
from hooked_av.families.minicpm_o.processor import OMNI_SYSTEM_PROMPT
from hooked_av.model.modality import Modality

from .test_loading import RecordingSafeOpen

FIXTURE = Path(__file__).parent / "fixtures" / "minicpmo_2_6_tiny"
CHECKPOINT = FIXTURE / "checkpoint"
CASES = ["text", "image", "audio", "omni", "batch"]
CHAT_OPTIONS = ("omni_input", "use_tts_template", "max_slice_nums", "use_image_id")


def content_item(item: dict, folder: Path):
    if item["type"] == "text":
        return item["text"]
    if item["type"] == "image":
        return Image.open(folder / item["path"]).convert("RGB")
    audio = np.load(folder / item["path"])
    return audio[item["start"]:item["end"]] if "start" in item else audio


def official_messages(case: str) -> tuple[list, dict]:
    """The msgs and chat() options the official code was called with, rebuilt from messages.json."""
    folder = FIXTURE / "cases" / case
    data = json.loads((folder / "messages.json").read_text())

    def conversation(msgs):
        return [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str)
                 else [content_item(i, folder) for i in m["content"]]} for m in msgs]

    msgs = data["messages"]
    msgs = [conversation(c) for c in msgs] if isinstance(msgs[0], list) else conversation(msgs)
    return msgs, {k: v for k, v in data["chat_call"].items() if k in CHAT_OPTIONS}


@pytest.fixture(scope="module")
def model():
    return HookedAVModel.from_pretrained(CHECKPOINT)


@pytest.fixture(scope="module")
def cases(model):
    """case -> (our batch, the official tensors)."""
    out = {}
    for case in CASES:
        msgs, options = official_messages(case)
        out[case] = (model.prepare_inputs(messages=msgs, **options),
                     load_file(str(FIXTURE / "cases" / case / "tensors.safetensors")))
    return out


def rows(official: dict, prefix: str, n_rows: int) -> list[torch.Tensor]:
    return [official[f"{prefix}.{b}"] for b in range(n_rows)]


# ---- processor -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_processor_reproduces_the_official_tensors(cases, case):
    batch, official = cases[case]
    n_rows = official["input_ids"].shape[0]
    assert torch.equal(batch["input_ids"], official["input_ids"].long())
    assert torch.equal(batch["attention_mask"].bool(), official["attention_mask"])
    for key in ("image_bound", "audio_bounds", "spk_bounds"):
        for ours, theirs in zip(batch[key], rows(official, key, n_rows), strict=True):
            assert torch.equal(ours.reshape(-1, 2), theirs.reshape(-1, 2)), key
    for b in range(n_rows):
        strips = batch["pixel_values"][b]
        official_strips = [official[f"pixel_values_u8.{b}.{k}"] for k in range(len(strips))]
        assert f"pixel_values_u8.{b}.{len(strips)}" not in official
        for ours, codes in zip(strips, official_strips, strict=True):
            assert torch.equal(ours, ((codes.float() / 255) - 0.5) / 0.5)  # bit for bit
        if f"tgt_sizes.{b}" in official:
            assert torch.equal(batch["tgt_sizes"][b], official[f"tgt_sizes.{b}"])
    if "audio_features" in official:
        lens = torch.cat(batch["audio_feature_lens"])
        assert torch.equal(lens, torch.cat(rows(official, "audio_feature_lens", n_rows)))
        assert batch["audio_features"].shape == official["audio_features"].shape
        assert (batch["audio_features"] - official["audio_features"]).abs().max() < 1e-5
    else:
        assert "audio_features" not in batch


def test_slicing_at_the_real_448_settings(model):
    """The official image processor's grids, encoder images and placeholder counts at scale 448, 9 slices."""
    from hooked_av.families.minicpm_o.slicing import SliceSettings, slice_image

    settings = SliceSettings(scale=448, patch=14, max_slices=9)
    for row in json.loads((FIXTURE / "slicing_448.json").read_text()):
        image = Image.new("RGB", tuple(row["image_wh"]), (90, 120, 30))
        images, grid = slice_image(image, settings, max_slices=9)
        assert (list(grid) if grid else None) == row["grid_cols_rows"], row["image_wh"]
        assert [[im.height // 14, im.width // 14] for im in images] == row["tgt_sizes_hw_patches"], row["image_wh"]


def test_audio_placeholders_at_many_durations(model):
    """25 tokens per second in 1 s chunks (official counts for 0.3 s to 45 s), with and without chunking."""
    processor = model.processor
    unk = processor.markers.unk
    for row in json.loads((FIXTURE / "audio_tokens.json").read_text()):
        for chunk_input, key in ((True, "chunk_input"), (False, "no_chunk")):
            text = processor.audio_placeholder(row["samples"], chunk_input)
            assert text.count(unk) == row[key]["placeholder_unk"], (row["seconds"], key)
            assert text.count(processor.markers.audio_start) == row[key]["audio_start_tags"]


# ---- model -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_logits_residual_and_encoder_outputs_equal_the_official(model, cases, case):
    batch, official = cases[case]
    n_layers = model.cfg.n_layers
    logits, cache = model.run_with_cache(batch, names_filter=lambda n: n in {
        f"blocks.{n_layers - 1}.hook_resid_post", "hook_image_embeds", "hook_video_embeds", "hook_audio_embeds"})
    real = official["attention_mask"]
    assert (logits[real] - official["logits"][real]).abs().max() < 1e-4
    resid = cache[f"blocks.{n_layers - 1}.hook_resid_post"]
    assert (resid[real] - official["hidden_pre_norm"][real]).abs().max() < 1e-4
    n_rows = real.shape[0]
    vision = [official[f"vision_embeds.{b}"].flatten(0, 1) for b in range(n_rows) if f"vision_embeds.{b}" in official]
    video_or_image = "hook_video_embeds" if case == "omni" else "hook_image_embeds"
    if vision:
        assert (cache[video_or_image] - torch.cat(vision)).abs().max() < 1e-4
    else:
        assert video_or_image not in cache
    audio = [official[k] for k in sorted(k for k in official if k.startswith("audio_embeds."))]
    if audio:
        assert (cache["hook_audio_embeds"] - torch.cat(audio)).abs().max() < 1e-4


@pytest.mark.parametrize("case", CASES)
def test_greedy_tokens_equal_the_official_up_to_the_first_terminator(model, cases, case):
    batch, official = cases[case]
    expected = official["generated_ids"]
    out = model.generate(batch, max_new_tokens=expected.shape[1], do_sample=False)
    stops = set(model.adapter.stop_token_ids())
    assert stops == {model.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    for ours, theirs in zip(out.new_tokens.tolist(), expected.tolist(), strict=True):
        end = next((i + 1 for i, t in enumerate(theirs) if t in stops), len(theirs))
        assert ours[:end] == theirs[:end]


def test_batch_row_stops_at_endoftext(model, cases):
    batch, official = cases["batch"]
    out = model.generate(batch, max_new_tokens=12)
    eot = model.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert out.new_tokens[1, 1] == eot == official["generated_ids"][1, 1]
    assert out.modality_map.codes[1, -10:].eq(Modality.PAD).all()  # after the stop, padding


def test_modality_map_of_the_omni_layout(model, cases):
    batch, _ = cases["omni"]
    q = model.processor.query_num
    mm = model.modality_map(batch)
    counts = mm.counts()
    assert counts["video"] == 3 * q and counts["audio"] == 3 * 25 and "image" not in counts
    runs = mm.runs()
    tokenizer = model.tokenizer
    ids = batch["input_ids"][0]
    first_video = mm.positions("video")[0]
    # <unit> and <image> before each frame, <|audio_start|> before each second of audio: special markers
    assert ids[first_video - 1] == tokenizer.convert_tokens_to_ids("<image>")
    assert ids[first_video - 2] == tokenizer.convert_tokens_to_ids("<unit>")
    assert mm.codes[0, first_video - 2: first_video].eq(Modality.SPECIAL).all()
    second = [("video", q), ("special", 2), ("audio", 25)]  # ... </image><|audio_start|> ...
    assert runs == [("special", 1), ("template", 5), ("text", len(OMNI_SYSTEM_PROMPT)), ("special", 1), ("template", 1),
                    ("special", 1), ("template", 5), ("special", 2), *second,  # <unit><image>
                    ("special", 3), *second, ("special", 3), *second,  # <|audio_end|><unit><image>
                    ("special", 2), ("template", 1), ("special", 1), ("template", len("assistant\n")),
                    ("special", 4)]  # <|spk_bos|><|spk|><|spk_eos|><|tts_bos|>
    image_map = model.modality_map(cases["image"][0])
    assert image_map.counts()["image"] == 3 * q and "video" not in image_map.counts()
    assert image_map.counts()["template"] > 0 and image_map.counts()["text"] > 0


# ---- loading ---------------------------------------------------------------------------------------------
def test_tts_tensors_are_never_read(monkeypatch):
    stored = set(load_file(str(CHECKPOINT / "model.safetensors")))
    assert any(k.startswith("tts.") for k in stored)
    RecordingSafeOpen.read = []
    monkeypatch.setattr(safetensors, "safe_open", RecordingSafeOpen)
    model = HookedAVModel.from_pretrained(CHECKPOINT)
    monkeypatch.undo()
    assert sorted(RecordingSafeOpen.read) == sorted(k for k in stored if not k.startswith("tts."))
    assert not any(k.startswith("tts.") for k in model.adapter.hf_model.state_dict())
    assert model.cfg.family == "minicpm_o_2_6"


def copy_checkpoint(dst: Path) -> Path:
    shutil.copytree(CHECKPOINT, dst)
    return dst


def test_weights_that_do_not_fit_the_config_are_a_clear_error(tmp_path):
    folder = copy_checkpoint(tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["hidden_size"] = 48
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedCheckpointError, match=r"tensor \S+ has shape .*the config says"):
        HookedAVModel.from_pretrained(folder)
    config["vision_config"]["hidden_size"] = 32
    config["drop_vision_last_layer"] = True  # the official default: one vision layer fewer than stored
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedCheckpointError, match=r"0 missing .*16 unexpected \(e\.g\. \['vpm\.encoder\.layers\.1\."):
        HookedAVModel.from_pretrained(folder)


def test_config_without_its_sub_configs_is_a_clear_error(tmp_path):
    folder = copy_checkpoint(tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    del config["audio_config"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedCheckpointError, match="audio_config"):
        HookedAVModel.from_pretrained(folder)


def test_never_runs_the_checkpoints_own_code(tmp_path):
    """A .py file beside the weights (as in the real hub folder) is never imported."""
    folder = copy_checkpoint(tmp_path / "ckpt")
    for name in ("modeling_minicpmo.py", "processing_minicpmo.py", "configuration_minicpm.py",
                 "tokenization_minicpmo_fast.py"):
        (folder / name).write_text("raise RuntimeError('remote code ran')\n")
    model = HookedAVModel.from_pretrained(folder)
    assert type(model.processor).__module__ == "hooked_av.families.minicpm_o.processor"


# ---- other sizes and the pieces that differ from transformers ----------------------------------------------
OTHER_SIZES = {  # GQA group 4, 2 resampler heads, the official drop_vision_last_layer default, 8 queries
    "hidden_size": 256, "num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 320,
    "num_hidden_layers": 3, "query_num": 8, "drop_vision_last_layer": True,
    "vision_config": {"hidden_size": 48, "num_attention_heads": 3, "intermediate_size": 96, "num_hidden_layers": 3,
                      "image_size": 224, "patch_size": 14, "model_type": "siglip_vision_model"},
    "audio_config": {"d_model": 48, "encoder_attention_heads": 3, "encoder_ffn_dim": 192, "encoder_layers": 2,
                     "decoder_layers": 1, "num_mel_bins": 80, "max_source_positions": 1500, "model_type": "whisper"},
}


def write_other_size_checkpoint(folder: Path, seed: int = 0) -> Path:
    """A random MiniCPM-o checkpoint in the official layout at OTHER_SIZES (plus tts.* tensors), with the
    fixture's tokenizer and a preprocessor for 8 queries and 56 px slices."""
    from hooked_av.families.minicpm_o import MiniCPMO, MiniCPMOConfig

    shutil.copytree(CHECKPOINT, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    config = {**json.loads((CHECKPOINT / "config.json").read_text()), **OTHER_SIZES}
    (folder / "config.json").write_text(json.dumps(config))
    pre = json.loads((CHECKPOINT / "preprocessor_config.json").read_text())
    pre.update(image_feature_size=8, scale_resolution=56)
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    generator = torch.Generator().manual_seed(seed)
    state = MiniCPMO(MiniCPMOConfig(**config)).state_dict()
    for name, tensor in state.items():
        scale = tensor.shape[-1] ** -0.5 if tensor.ndim > 1 else 0.1
        noise = torch.randn(tensor.shape, generator=generator) * scale
        state[name] = (1 + noise) if name.endswith("norm.weight") or "layer_norm" in name or ".ln_" in name \
            else noise
    state["apm.embed_positions.weight"] = state["apm.embed_positions.weight"] * 0.1
    save_file({**state, "tts.emb_text.weight": torch.zeros(4, 4)}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def other_size(tmp_path_factory):
    return HookedAVModel.from_pretrained(write_other_size_checkpoint(tmp_path_factory.mktemp("minicpmo") / "ckpt"))


def synthetic_clip(seconds: int, fps: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(int(seconds * fps), 40, 60, 3), dtype=np.uint8)
    t = np.arange(seconds * 16000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
    return frames, audio


def test_other_sizes_are_read_from_the_config(other_size):
    cfg, hf = other_size.cfg, other_size.adapter.hf_model
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head) == (256, 3, 8, 2, 32)
    assert len(hf.vpm.encoder.layers) == 2  # drop_vision_last_layer
    assert hf.resampler.num_heads == 2 and hf.resampler.query.shape == (8, 256)


def test_omni_recipe_from_a_prompt_with_video_and_audio(other_size):
    """prepare_inputs(prompt, video=, audio=): per second <unit>, one frame, one second of audio; then the prompt."""
    frames, audio = synthetic_clip(seconds=3, fps=2.0)
    batch = other_size.prepare_inputs("What happens?", video=frames, audio=audio, fps=2.0)
    tokenizer = other_size.tokenizer
    text = tokenizer.decode(batch["input_ids"][0])
    assert text.startswith("<|im_start|>user\n" + OMNI_SYSTEM_PROMPT + "<|im_end|>\n<|im_start|>user\n<unit><image>")
    assert text.endswith("<|audio_end|>What happens?<|im_end|>\n<|im_start|>assistant\n"
                         "<|spk_bos|><|spk|><|spk_eos|><|tts_bos|>")
    assert text.count("<unit>") == 3 and text.count("<|audio_start|>") == 3 and text.count("<image_id>") == 0
    counts = other_size.modality_map(batch).counts()
    assert counts["video"] == 3 * 8 and counts["audio"] == 75 and "image" not in counts
    # the frame shown at the end of each second (index (k + 1) * fps, clipped), each upscaled to ~56^2 px
    expected = other_size.processor.pixel_strip(Image.fromarray(frames[2]).resize((70, 42), Image.Resampling.BICUBIC))
    assert torch.equal(batch["pixel_values"][0][0], expected[0])


def test_decoder_at_other_sizes_equals_transformers_qwen2(other_size):
    frames, audio = synthetic_clip(seconds=2, fps=1.0, seed=1)
    batch = other_size.prepare_inputs(["Hi", "What happens?"], video=[None, frames], audio=[None, audio], fps=1.0)
    logits, cache = other_size.run_with_cache(batch, names_filter="hook_inputs_embeds")
    mask = batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    llm = other_size.adapter.hf_model.llm
    reference = llm(inputs_embeds=cache["hook_inputs_embeds"], attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    assert (logits[real] - reference[real]).abs().max() < 1e-4


def test_audio_encoder_is_block_causal_over_seconds(other_size):
    """An audio token of second k sees audio up to the end of second k only (the official 1 s chunk mask)."""
    _, audio = synthetic_clip(seconds=3, fps=1.0)
    changed = audio.copy()
    changed[32000:] = changed[32000:][::-1] * 2
    embeds = []
    for wave in (audio, changed):
        batch = other_size.prepare_inputs(messages=[{"role": "user", "content": ["Listen.", wave]}])
        _, cache = other_size.run_with_cache(batch, names_filter="hook_audio_embeds")
        embeds.append(cache["hook_audio_embeds"])
    assert embeds[0].shape == (75, 256)
    # second 1 (tokens 0-24) never sees the change; second 2's last mel frame does (its STFT window reaches
    # into second 3), so its tokens are not compared
    assert (embeds[0][:25] - embeds[1][:25]).abs().max() < 1e-5
    assert (embeds[0][50:] - embeds[1][50:]).abs().max() > 1e-2


def hf_bucket_rows(n: int, side: int) -> torch.Tensor:
    """Position ids of an n x 1 grid from transformers' own Idefics2 embeddings (its i * (1/n) arithmetic)."""
    from transformers import Idefics2VisionConfig
    from transformers.models.idefics2.modeling_idefics2 import Idefics2VisionEmbeddings

    emb = Idefics2VisionEmbeddings(Idefics2VisionConfig(hidden_size=1, image_size=side * 14, patch_size=14))
    with torch.no_grad():
        emb.patch_embedding.weight.zero_()
        emb.patch_embedding.bias.zero_()
        emb.position_embedding.weight.copy_(torch.arange(side * side, dtype=torch.float32)[:, None])
        out = emb(torch.zeros(1, 3, n * 14, 14), torch.ones(1, n, 1, dtype=torch.bool))
    return out[0, :, 0].round().long()


@pytest.mark.parametrize("side, max_n, official_differs", [(70, 140, {49, 58, 77, 86, 98, 100, 110, 122, 135}),
                                                             (32, 64, {58})])
def test_navit_buckets_differ_from_transformers_where_the_official_code_measured_it(side, max_n, official_differs):
    """The official float-step arange puts one row in another bucket exactly for the grid sides measured
    (by running the official code on every side up to 140 / 64); elsewhere it equals transformers' Idefics2."""
    from hooked_av.families.minicpm_o.navit import bucket_position_ids

    differs = {n for n in range(1, max_n + 1) if not torch.equal(bucket_position_ids(n, 1, side), hf_bucket_rows(n, side))}
    assert differs == official_differs


def test_video_file_with_its_sound_track_equals_the_arrays(other_size, tmp_path):
    from hooked_av.data.media import load_audio, load_video

    from .test_media import write_clip

    path = tmp_path / "clip.mp4"
    write_clip(path, seconds=2.0)
    from_file = other_size.prepare_inputs("What happens?", video=path, use_audio_in_video=True, fps=2.0)
    audio = load_audio(path)
    from_arrays = other_size.prepare_inputs("What happens?", video=load_video(path, 2.0), audio=audio, fps=2.0)
    assert torch.equal(from_file["input_ids"], from_arrays["input_ids"])
    assert torch.equal(from_file["audio_features"], from_arrays["audio_features"])
    assert len(audio) > 32000  # the decoded track runs a little past the video's 2 s: the rest is dropped
    counts = other_size.modality_map(from_file).counts()
    assert counts["audio"] == 50 and counts["video"] == 2 * 8


def test_bfloat16_loading(cases):
    model = HookedAVModel.from_pretrained(CHECKPOINT, dtype=torch.bfloat16)
    hf = model.adapter.hf_model
    assert {p.dtype for p in hf.parameters()} == {torch.bfloat16}
    batch, official = cases["omni"]
    logits = model(batch)
    assert logits.dtype == torch.bfloat16
    real = official["attention_mask"]
    assert (logits.float()[real] - official["logits"][real]).abs().max() < 0.5  # bf16 rounding, 2 layers


def test_messages_are_for_families_that_take_them(vl):
    with pytest.raises(InputError, match="qwen2_5_vl family takes a prompt"):
        vl[2].prepare_inputs(messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(InputError, match="needs a prompt"):
        vl[2].prepare_inputs()


@pytest.mark.parametrize("content, message", [
    (["Hi", np.zeros((4, 4, 3), dtype=np.uint8)], "arrays are audio"),
    (["Hi", 3], "holds a int"),
    (["Hi", "(<image>./</image>)"], "do not write"),
])
def test_malformed_messages_are_typed_errors(model, content, message):
    with pytest.raises(InputError, match=message):
        model.prepare_inputs(messages=[{"role": "user", "content": content}])
    with pytest.raises(InputError, match="first message"):
        model.prepare_inputs(messages=[{"role": "assistant", "content": "Hi"}])


def test_from_hf_model_wraps_the_module_and_needs_the_processor(model, cases):
    from hooked_av import MissingProcessorError

    hf = model.adapter.hf_model
    wrapped = HookedAVModel.from_hf_model(hf, model.processor)
    assert wrapped.cfg.family == "minicpm_o_2_6" and wrapped.W_E is model.W_E  # shared, not copied
    batch, _ = cases["image"]
    assert torch.equal(wrapped(batch), model(batch))
    with pytest.raises(MissingProcessorError, match="marker tokens"):
        HookedAVModel.from_hf_model(hf)
