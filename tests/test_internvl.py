"""InternOmni and its base InternVL 2 against the official implementation's outputs
(tests/fixtures/internomni_tiny, produced by OpenGVLab's own code), through the public API only: from_pretrained
on the official folder layouts, prepare_inputs(prompt, video=, audio=, image=) on the raw inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from einops import rearrange
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from hooked_av import HookedAVModel, InputError, UnsupportedCheckpointError
from hooked_av.families.internvl.packed_qkv import pack_wqkv, split_wqkv
from hooked_av.families.internvl.pixel_shuffle import pixel_shuffle
from hooked_av.families.internvl.processor import InternVLProcessor
from hooked_av.families.internvl.whisper import audio_token_counts
from hooked_av.model.modality import Modality

FIXTURE = Path(__file__).parent / "fixtures" / "internomni_tiny"
CHECKPOINT, BASE_CHECKPOINT = FIXTURE / "checkpoint", FIXTURE / "checkpoint_base"
CASES = ["text", "image", "audio", "image_audio", "video", "video_audio", "batch_audio", "base_video"]
# the official modality codes (case tensors' `modality`) of our modality map's codes
OFFICIAL_CODE = {Modality.IMAGE: 1, Modality.VIDEO: 1, Modality.AUDIO: 2, Modality.PAD: 3}


def case_json(case: str) -> dict:
    return json.loads((FIXTURE / "cases" / case / "case.json").read_text())


def official_tensors(case: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "cases" / case / "tensors.safetensors"))


def media_of(case: str) -> dict:
    """prepare_inputs' media for a case's raw inputs: one image, frames as a video, a waveform (or a list per row)."""
    folder, inputs = FIXTURE / "cases" / case, case_json(case)["inputs"]
    if inputs and isinstance(inputs[0], list):  # a batch: one audio per row
        return {"audio": [np.load(folder / row[0]["path"]) for row in inputs]}
    images = [np.asarray(Image.open(folder / i["path"]).convert("RGB")) for i in inputs if i["type"] == "image"]
    audios = [np.load(folder / i["path"]) for i in inputs if i["type"] == "audio"]
    media: dict = {"audio": audios[0]} if audios else {}
    if len(images) == 1:
        media["image"] = images[0]
    elif images:
        media["video"] = np.stack(images)
    return media


def prompts_of(case: str) -> str | list[str]:
    """The question as the user writes it, without the placeholders the official layout puts before it."""
    question = case_json(case)["question"]
    strip = lambda q: q.split("\n")[-1]  # noqa: E731 - placeholders are on the lines before the question
    return [strip(q) for q in question] if isinstance(question, list) else strip(question)


@pytest.fixture(scope="module")
def models():
    return {"internomni": HookedAVModel.from_pretrained(CHECKPOINT),
            "internvl2_base": HookedAVModel.from_pretrained(BASE_CHECKPOINT)}


@pytest.fixture(scope="module")
def cases(models):
    """case -> (model, our batch, the official tensors)."""
    out = {}
    for case in CASES:
        model = models[case_json(case)["model"]]
        out[case] = (model, model.prepare_inputs(prompts_of(case), **media_of(case)), official_tensors(case))
    return out


# ---- loading -----------------------------------------------------------------------------------------------------
def test_each_official_folder_loads_as_its_family(models):
    assert models["internomni"].cfg.family == "internomni" and models["internvl2_base"].cfg.family == "internvl2"
    assert set(models["internomni"].encoders) == {"vision", "audio"}
    assert set(models["internvl2_base"].encoders) == {"vision"}
    assert not list(CHECKPOINT.glob("*.py"))  # the loader has no remote code to run, and needs none


def test_packed_wqkv_is_split_per_kv_head(models):
    """W_Q / W_K / W_V views (and so hook_q/k/v) are the official per-head rows: wqkv viewed as
    [kv_heads, group + 2, d_head, d_model], slots 0..group-1 queries, then key, then value."""
    model = models["internomni"]
    cfg = model.cfg
    raw = load_file(str(CHECKPOINT / "model.safetensors"))
    group = cfg.n_heads // cfg.n_key_value_heads
    for layer in range(cfg.n_layers):
        wqkv = raw[f"language_model.model.layers.{layer}.attention.wqkv.weight"]
        slots = rearrange(wqkv, "(h gs d) m -> h gs d m", gs=group + 2, d=cfg.d_head)
        attn = model.blocks[layer].attn
        for head in range(cfg.n_heads):
            assert torch.equal(attn.W_Q[head], slots[head // group, head % group].T)
        for kv in range(cfg.n_key_value_heads):
            assert torch.equal(attn.W_K[kv], slots[kv, group].T) and torch.equal(attn.W_V[kv], slots[kv, group + 1].T)
        q, k, v = split_wqkv(wqkv, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head)
        assert torch.equal(pack_wqkv(q, k, v, cfg.n_key_value_heads, cfg.d_head), wqkv)
        assert not torch.equal(q, wqkv[: cfg.n_heads * cfg.d_head])  # "first rows = q" would be wrong
    with pytest.raises(UnsupportedCheckpointError, match="does not fit"):
        split_wqkv(wqkv[:-1], cfg.n_heads, cfg.n_key_value_heads, cfg.d_head)


def test_weights_that_do_not_fit_the_config_are_a_clear_error(tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(BASE_CHECKPOINT, folder)
    state = load_file(str(folder / "model.safetensors"))
    state["language_model.model.layers.0.attention.wqkv.weight"] = state[
        "language_model.model.layers.0.attention.wqkv.weight"][:-16]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(UnsupportedCheckpointError, match="wqkv"):
        HookedAVModel.from_pretrained(folder)
    config = json.loads((BASE_CHECKPOINT / "config.json").read_text())
    config["llm_config"]["architectures"] = ["Phi3ForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedCheckpointError, match="InternLM2"):
        HookedAVModel.from_pretrained(folder)


# ---- processor ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_processor_reproduces_the_official_tensors(cases, case):
    model, batch, official = cases[case]
    assert torch.equal(batch["input_ids"], official["input_ids"])
    assert torch.equal(batch["attention_mask"], official["attention_mask"])
    if "pixel_values" in official:
        assert torch.equal(batch["pixel_values"], official["pixel_values"])  # bit for bit
    else:
        assert "pixel_values" not in batch
    if "audio_values" in official:
        for key in ("audio_len_after_cnn", "audio_token_num"):
            assert torch.equal(batch[key], official[key]), key
        frames = official["audio_values"].shape[-1]  # the frames the official encoder reads
        assert batch["audio_values"].shape[-1] == 3000
        assert (batch["audio_values"][..., :frames] - official["audio_values"]).abs().max() < 5e-5
    else:
        assert "audio_values" not in batch
    codes = model.modality_map(batch).codes
    ours = torch.zeros_like(official["modality"])
    for modality, code in OFFICIAL_CODE.items():
        ours[codes == modality] = code
    assert torch.equal(ours, official["modality"])


def test_video_frames_are_video_and_an_image_is_an_image(cases):
    for case, expected in (("video_audio", "video"), ("image_audio", "image")):
        model, batch, official = cases[case]
        counts = model.modality_map(batch).counts()
        assert counts[expected] == int((official["modality"] == 1).sum()) and counts["audio"] == 30
        assert counts.get("video" if expected == "image" else "image", 0) == 0


def test_prompt_with_its_own_placeholders_is_used_as_written(cases):
    model, batch, _ = cases["video_audio"]
    written = model.prepare_inputs(case_json("video_audio")["question"], **media_of("video_audio"))
    assert torch.equal(written["input_ids"], batch["input_ids"])
    with pytest.raises(InputError, match="placeholders"):
        model.prepare_inputs("<image>\nWhat is it?", **media_of("video_audio"))


def test_tiling_at_the_real_448_settings():
    """The official dynamic tiling at the real settings (448 px, up to 12 tiles + thumbnail, 256 tokens a tile)."""
    config = {"force_image_size": 448, "downsample_ratio": 0.5, "dynamic_image_size": True, "min_dynamic_patch": 1,
              "max_dynamic_patch": 12, "use_thumbnail": True, "vision_config": {"image_size": 448, "patch_size": 14}}
    processor = InternVLProcessor(None, config)
    assert processor.tokens_per_tile == 256
    for row in json.loads((FIXTURE / "tiling_448.json").read_text()):
        tiles = processor.image_tiles(Image.new("RGB", tuple(row["image_wh"]), (90, 120, 30)))
        assert len(tiles) == row["tiles_incl_thumbnail"], row["image_wh"]
        assert all(t.size == (448, 448) for t in tiles)
        assert len(tiles) * processor.tokens_per_tile == row["img_context_tokens"]


def test_audio_token_counts_at_many_durations():
    """25 tokens per second, at most 750 (cut at 30 s): the official counts from 0.1 s to 45 s."""
    for row in json.loads((FIXTURE / "audio_tokens.json").read_text()):
        assert audio_token_counts(row["samples"]) == (row["audio_len_after_cnn"], row["audio_token_num"]), row


def test_pixel_shuffle_layout():
    """v2: token (i, j) concatenates the features at (2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1); v1 is its
    transpose; v2 equals transformers' InternVL pixel shuffle."""
    from transformers.models.internvl.modeling_internvl import InternVLModel

    grid = torch.randn(2, 4, 4, 3)
    v2 = pixel_shuffle(grid, 0.5, "v2")
    for i in range(2):
        for j in range(2):
            expected = torch.cat([grid[:, 2 * i, 2 * j], grid[:, 2 * i, 2 * j + 1], grid[:, 2 * i + 1, 2 * j],
                                  grid[:, 2 * i + 1, 2 * j + 1]], dim=-1)
            assert torch.equal(v2[:, i, j], expected)
    assert torch.equal(pixel_shuffle(grid, 0.5, "v1"), v2.transpose(1, 2))
    assert torch.equal(InternVLModel.pixel_shuffle(None, grid, 0.5), v2)


# ---- model -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_logits_residual_and_encoder_outputs_equal_the_official(cases, case):
    model, batch, official = cases[case]
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    logits, cache = model.run_with_cache(batch, names_filter=lambda n: n in {
        last, "hook_image_embeds", "hook_video_embeds", "hook_audio_embeds"})
    real = official["attention_mask"].bool()
    assert (logits[real] - official["logits"][real]).abs().max() < 1e-4
    assert (cache[last][real] - official["hidden_pre_norm"][real]).abs().max() < 1e-4
    vision = [cache[k] for k in ("hook_image_embeds", "hook_video_embeds") if k in cache.cache_dict]
    if "vit_embeds" in official:
        assert (torch.cat(vision) - official["vit_embeds"].flatten(0, 1)).abs().max() < 1e-5
    else:
        assert not vision
    if "audio_embeds" in official:  # audio i fills its slots with its first audio_token_num rows
        expected = torch.cat([official["audio_embeds"][i, :n] for i, n in enumerate(official["audio_token_num"])])
        assert (cache["hook_audio_embeds"] - expected).abs().max() < 1e-5
    else:
        assert "hook_audio_embeds" not in cache.cache_dict


@pytest.mark.parametrize("case", CASES)
def test_greedy_tokens_equal_the_official_up_to_the_first_terminator(cases, case):
    model, batch, official = cases[case]
    eos = case_json(case)["generate_kwargs"]["eos_token_id"]
    out = model.generate(batch, max_new_tokens=12, stop_token_ids=eos if isinstance(eos, list) else [eos])
    for ours, theirs in zip(out.new_tokens.tolist(), official["generated_ids"].tolist(), strict=True):
        stops = [i for i, t in enumerate(theirs) if t in ([eos] if isinstance(eos, int) else eos)]
        keep = stops[0] + 1 if stops else len(theirs)
        assert ours[:keep] == theirs[:keep]


def test_default_stop_tokens_follow_each_official_helper(models):
    """InternOmni's Chat stops at </s> or <|im_end|>; InternVL 2's chat() at <|im_end|> only."""
    vocab = models["internomni"].tokenizer.get_vocab()
    assert set(models["internomni"].stop_tensor().tolist()) == {vocab["</s>"], vocab["<|im_end|>"]}
    assert models["internvl2_base"].stop_tensor().tolist() == [vocab["<|im_end|>"]]


def test_batch_audio_is_encoded_as_one_batch(cases):
    """The shorter audio's embeddings are the batched ones (its convolutions see the frames after its end), which
    differ from encoding it alone: reproduced, not 'fixed'."""
    model, batch, official = cases["batch_audio"]
    alone = model.prepare_inputs(prompts_of("batch_audio")[0], audio=media_of("batch_audio")["audio"][0])
    _, cache = model.run_with_cache(alone, names_filter="hook_audio_embeds")
    n = int(official["audio_token_num"][0])
    assert (cache["hook_audio_embeds"] - official["audio_embeds"][0, :n]).abs().max() > 1e-3


def test_internomni_without_audio_equals_its_base(cases):
    """The fixture's InternOmni shares every non-audio weight with its base: same ids and logits on the video case."""
    omni, omni_batch, _ = cases["video"]
    base, base_batch, _ = cases["base_video"]
    assert torch.equal(omni_batch["input_ids"], base_batch["input_ids"])
    assert (omni(omni_batch) - base(base_batch)).abs().max() < 1e-5


def test_base_model_refuses_audio(models):
    with pytest.raises(InputError, match="no audio"):
        models["internvl2_base"].prepare_inputs("What do you hear?", audio=np.zeros(16000, dtype=np.float32))


def test_prompt_beyond_the_rope_range_is_refused(cases):
    """Past max_position_embeddings the official RoPE base changes (dynamic NTK): refused, not silently wrong."""
    model, batch, _ = cases["text"]
    limit = model.adapter.text_config.max_position_embeddings
    long = {**batch, "attention_mask": torch.ones(1, limit + 1, dtype=torch.long)}
    with pytest.raises(InputError, match="dynamic NTK"):
        model.adapter.position_ids(long)


@pytest.mark.parametrize("case", ["image_audio", "batch_audio"])
def test_encoder_modules_on_the_official_inputs_equal_the_official_outputs(models, case):
    """The written modules alone, fed the official inputs: `extract_feature` (ViT, CLS dropped, pixel shuffle, mlp1)
    gives `vit_embeds`; the official-forward Whisper encoder + mlp2 gives every pooled row of `audio_embeds` (padding
    rows of the shorter audio included), which transformers' stock WhisperEncoder forward does not."""
    hf = models["internomni"].adapter.hf_model
    official = official_tensors(case)
    if "pixel_values" in official:
        assert (hf.extract_feature(official["pixel_values"]) - official["vit_embeds"]).abs().max() < 1e-5
    features = torch.nn.functional.pad(official["audio_values"], (0, 3000 - official["audio_values"].shape[-1]))
    with torch.no_grad():
        ours = hf.extract_audio_feature(features, official["audio_len_after_cnn"])
        assert (ours - official["audio_embeds"]).abs().max() < 1e-5
        stock = WhisperEncoder.forward(hf.audio_model.encoder, features).last_hidden_state  # the 30 s window
    n = official["audio_embeds"].shape[1]
    pooled = torch.nn.functional.avg_pool1d(stock.transpose(1, 2), 2, 2).transpose(1, 2)[:, :n]
    assert (hf.mlp2(pooled) - official["audio_embeds"]).abs().max() > 1e-2


@pytest.mark.parametrize("folder,parts", [(BASE_CHECKPOINT, 2), (CHECKPOINT, 3)], ids=["internvl2", "internomni"])
def test_one_attention_implementation_for_the_llm_and_every_encoder(folder, parts):
    """The family configs (CompositeConfig) set the attention implementation on every transformers sub-config
    (InternVL 2: LLM and vision; InternOmni: and the Whisper encoder) and read it from the LLM's."""
    from hooked_av.families.internvl.modeling import InternOmniConfig, InternVLChatConfig

    raw = json.loads((folder / "config.json").read_text())
    config = (InternOmniConfig if "audio_config" in raw else InternVLChatConfig)(**raw)
    assert config.get_text_config() is config.text_config and len(config.sub_configs()) == parts
    config._attn_implementation = "eager"
    assert [sub._attn_implementation for sub in config.sub_configs()] == ["eager"] * parts
    assert config._attn_implementation == "eager"
