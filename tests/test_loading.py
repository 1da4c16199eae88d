"""Loading checkpoint folders (thinker-only, full Qwen2.5-Omni, sharded, VL), weight sharing, typed errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import safetensors
import torch
import transformers
import yaml
from safetensors.torch import load_file, save_file

from hooked_av import HookedAVModel, MissingProcessorError, ModelConfigError, UnsupportedCheckpointError
from hooked_av.model.adapter import load_adapter_class
from hooked_av.model.family_spec import (builtin_config_dir, builtin_family_specs, load_family_spec, parse_family_spec,
                                        resolve_class)
from hooked_av.testing.tiny import tiny_qwen2_5_vl

from .conftest import PROMPT

FAMILY = {"omni": "qwen2_5_omni", "vl": "qwen2_5_vl", "minicpm_o": "minicpm_o_2_6",
          "qwen3_omni": "qwen3_omni_moe", "internomni": "internomni", "internvl2": "internvl2",
          "videollama2": "videollama2_av"}


# ---- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(omni, vl):
    return {"omni": omni, "vl": vl}


@pytest.fixture(scope="module")
def batches(omni, vl, media):
    return {"omni": omni[2].prepare_inputs(PROMPT, video=media["video2"], audio=media["audio2"]),
            "vl": vl[2].prepare_inputs(PROMPT, video=media["video2"], image=media["image"])}


@pytest.fixture(scope="module")
def reference_logits(models, batches):
    with torch.no_grad():
        return {name: models[name][0](**batches[name]).logits for name in models}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, models):
    """save_pretrained folders (weights + processor) of the session's tiny HF models."""
    out = {}
    for name, (hf_model, processor, _) in models.items():
        folder = tmp_path_factory.mktemp(f"{name}_ckpt")
        hf_model.save_pretrained(folder)
        processor.save_pretrained(folder)
        out[name] = folder
    return out


def copy_processor_files(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if f.name not in ("config.json", "model.safetensors", "model.safetensors.index.json"):
            shutil.copy(f, dst / f.name)


def hub_name(name: str) -> str:
    """HF 5.x thinker parameter name -> the name a full Qwen2.5-Omni hub checkpoint stores it under."""
    for module, hub in (("model.language_model.", "model."), ("model.audio_tower.", "audio_tower."),
                        ("model.visual.", "visual.")):
        if name.startswith(module):
            return "thinker." + hub + name.removeprefix(module)
    assert name.startswith("lm_head."), name
    return "thinker." + name


EXTRA_TENSORS = {"talker.model.layers.0.self_attn.q_proj.weight": torch.ones(8, 8),
                 "talker.thinker_to_talker_proj.weight": torch.ones(8, 128),
                 "token2wav.code2wav_dit_model.proj.weight": torch.ones(4, 4)}


def write_shards(folder: Path, thinker: dict, extra: dict) -> None:
    """The hub's sharded layout: the thinker's tensors in two shards, `extra` (talker, vocoder) in a third, and
    model.safetensors.index.json mapping every name to its shard."""
    keys = sorted(thinker)
    shards = {"model-00001-of-00003.safetensors": {k: thinker[k] for k in keys[: len(keys) // 2]},
              "model-00002-of-00003.safetensors": {k: thinker[k] for k in keys[len(keys) // 2:]},
              "model-00003-of-00003.safetensors": dict(extra)}
    for file, tensors in shards.items():
        save_file(tensors, str(folder / file))
    index = {"metadata": {}, "weight_map": {k: f for f, t in shards.items() for k in t}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def write_full_omni_checkpoint(folder: Path, hf_model, processor_folder: Path, sharded: bool) -> set[str]:
    """A full Qwen2.5-Omni folder: thinker under 'thinker.', plus talker and token2wav. Returns the thinker keys."""
    thinker = {hub_name(k): v.detach().clone().contiguous() for k, v in hf_model.state_dict().items()}
    config = {"model_type": "qwen2_5_omni", "architectures": ["Qwen2_5OmniForConditionalGeneration"],
              "thinker_config": hf_model.config.to_dict(), "enable_audio_output": True,
              "talker_config": {"model_type": "qwen2_5_omni_talker", "hidden_size": 8},
              "token2wav_config": {"model_type": "qwen2_5_omni_token2wav"}}
    (folder / "config.json").write_text(json.dumps(config))
    if not sharded:
        save_file({**thinker, **EXTRA_TENSORS}, str(folder / "model.safetensors"))
    else:
        write_shards(folder, thinker, EXTRA_TENSORS)
        # A stale file the index does not list must be ignored.
        save_file({min(thinker): torch.zeros(1)}, str(folder / "stale.safetensors"))
    copy_processor_files(processor_folder, folder)
    return set(thinker)


class RecordingSafeOpen:
    """Wraps safetensors.safe_open and records every tensor name actually read."""

    read: list[str] = []
    real = safetensors.safe_open

    def __init__(self, *args, **kwargs):
        self._handle = RecordingSafeOpen.real(*args, **kwargs)

    def __enter__(self):
        self._file = self._handle.__enter__()
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)

    def keys(self):
        return self._file.keys()

    def get_tensor(self, key):
        RecordingSafeOpen.read.append(key)
        return self._file.get_tensor(key)

    def get_slice(self, key):
        RecordingSafeOpen.read.append(key)
        return self._file.get_slice(key)

    def __getattr__(self, name):
        return getattr(self._file, name)


# ---- (a) from_pretrained on save_pretrained folders --------------------------------------------------------
@pytest.mark.parametrize("name", ["omni", "vl"])
def test_from_pretrained_matches_the_original(models, folders, batches, reference_logits, name):
    hf_model, processor, original = models[name]
    model = HookedAVModel.from_pretrained(folders[name])
    assert model.cfg.family == FAMILY[name]
    assert type(model.adapter.hf_model) is type(hf_model)
    assert model.processor is not None and type(model.processor) is type(processor)
    # Loaded, not shared: the folder's copy of the weights.
    assert model.W_E.data_ptr() != original.W_E.data_ptr()
    assert torch.equal(model.W_E, original.W_E)
    # The reloaded processor makes the same batch.
    batch = model.prepare_inputs(PROMPT)
    assert torch.equal(batch["input_ids"], original.prepare_inputs(PROMPT)["input_ids"])
    logits = model(batches[name])
    assert (logits - reference_logits[name]).abs().max() < 1e-5
    assert model.adapter.stop_token_ids() == original.adapter.stop_token_ids()


def test_reloaded_processor_builds_the_same_multimodal_batch(models, folders, batches, media):
    model = HookedAVModel.from_pretrained(folders["omni"])
    batch = model.prepare_inputs(PROMPT, video=media["video2"], audio=media["audio2"])
    ref = batches["omni"]
    assert set(batch) == set(ref)
    for key, value in ref.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(batch[key], value), key


def test_processor_argument(folders, batches, reference_logits):
    assert HookedAVModel.from_pretrained(folders["vl"], processor=None).processor is None
    bare = folders["vl"].parent / "vl_no_processor"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(folders["vl"] / f, bare / f)
    model = HookedAVModel.from_pretrained(bare)
    assert model.processor is None
    assert (model(batches["vl"]) - reference_logits["vl"]).abs().max() < 1e-5


# ---- (b) dtype and device --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["omni", "vl"])
def test_bfloat16_loading_equals_hf_own_loading(models, folders, batches, name):
    hf_model = models[name][0]
    model = HookedAVModel.from_pretrained(folders[name], dtype=torch.bfloat16, device="cpu")
    assert model.cfg.dtype == torch.bfloat16
    assert model.device == torch.device("cpu")
    assert {p.dtype for p in model.adapter.hf_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ref_model = getattr(transformers, type(hf_model).__name__).from_pretrained(
        folders[name], dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    # Buffers keep the dtypes HF gives them (fp32 rotary frequencies of the encoders).
    ours_buffers = {n: b.dtype for n, b in model.adapter.hf_model.named_buffers()}
    assert ours_buffers == {n: b.dtype for n, b in ref_model.named_buffers()}
    with torch.no_grad():
        logits = model(batches[name])
        ref = ref_model(**batches[name]).logits
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - ref.float()).abs().max() < 1e-4


# ---- (c) full Qwen2.5-Omni checkpoints ------------------------------------------------------------------
def test_hub_names_are_what_save_pretrained_writes(models, folders):
    """The hub layout used below is HF's own: save_pretrained writes the same names, minus 'thinker.'."""
    hf_model = models["omni"][0]
    written = set(load_file(str(folders["omni"] / "model.safetensors")))
    assert {hub_name(k).removeprefix("thinker.") for k in hf_model.state_dict()} == written


@pytest.mark.parametrize("sharded", [False, True], ids=["single_file", "sharded"])
def test_full_omni_checkpoint_loads_only_the_thinker(tmp_path, monkeypatch, models, folders, batches,
                                                     reference_logits, sharded):
    hf_model = models["omni"][0]
    thinker_keys = write_full_omni_checkpoint(tmp_path, hf_model, folders["omni"], sharded)
    RecordingSafeOpen.read = []
    monkeypatch.setattr(safetensors, "safe_open", RecordingSafeOpen)
    model = HookedAVModel.from_pretrained(tmp_path)
    monkeypatch.undo()
    read = RecordingSafeOpen.read
    assert sorted(read) == sorted(thinker_keys)  # every thinker tensor read once, nothing else
    assert not any(k.startswith(("talker.", "token2wav.")) for k in read)
    assert model.cfg.family == "qwen2_5_omni"
    assert type(model.adapter.hf_model).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    state = model.adapter.hf_model.state_dict()
    assert set(state) == set(hf_model.state_dict())
    assert not any("talker" in k or "token2wav" in k for k in [*state, *model.state_dict()])
    assert model.processor is not None
    assert (model(batches["omni"]) - reference_logits["omni"]).abs().max() < 1e-5


# ---- (d) from_hf_model shares weights ---------------------------------------------------------------------
def test_from_hf_model_shares_weights(models):
    for name in ("omni", "vl"):
        hf_model, _, model = models[name]
        lm = hf_model.model.language_model
        layer = lm.layers[0]
        storage = layer.self_attn.o_proj.weight.untyped_storage().data_ptr()
        assert model.blocks[0].attn.W_O.untyped_storage().data_ptr() == storage
        assert model.embed is lm.embed_tokens and model.W_E is lm.embed_tokens.weight
        assert model.unembed is hf_model.lm_head and model.unembed.weight is hf_model.lm_head.weight
        assert model.ln_final.w is lm.norm.weight
        assert model.blocks[1].mlp.down_proj is lm.layers[1].mlp.down_proj
        # No parameter of the hooked model is a copy.
        assert {id(p) for p in model.parameters()} <= {id(p) for p in hf_model.parameters()}


def test_weight_views_have_transformer_lens_shapes_and_layout(models):
    hf_model, _, model = models["vl"]
    cfg = model.cfg
    layer = hf_model.model.language_model.layers[1]
    attn, mlp = model.blocks[1].attn, model.blocks[1].mlp
    assert attn.W_O.shape == (cfg.n_heads, cfg.d_head, cfg.d_model)
    assert attn.W_Q.shape == (cfg.n_heads, cfg.d_model, cfg.d_head)
    assert attn.W_K.shape == (cfg.n_key_value_heads, cfg.d_model, cfg.d_head)
    assert mlp.W_out.shape == (cfg.d_mlp, cfg.d_model)
    assert model.W_U.shape == (cfg.d_model, cfg.d_vocab)
    assert model.W_E.shape == (cfg.d_vocab, cfg.d_model)
    d = cfg.d_head
    for h in (0, cfg.n_heads - 1):
        assert torch.equal(attn.W_O[h], layer.self_attn.o_proj.weight[:, h * d:(h + 1) * d].T)
        assert torch.equal(attn.W_Q[h], layer.self_attn.q_proj.weight[h * d:(h + 1) * d].T)
    assert torch.equal(mlp.W_out, layer.mlp.down_proj.weight.T)
    assert torch.equal(model.W_U, hf_model.lm_head.weight.T)


def test_editing_an_hf_weight_in_place_changes_the_hooked_model():
    hf_model, processor = tiny_qwen2_5_vl(seed=3)
    model = HookedAVModel.from_hf_model(hf_model, processor)
    batch = model.prepare_inputs(PROMPT)
    before = model(batch)
    hf_model.model.language_model.layers[0].self_attn.o_proj.weight.mul_(3.0)
    after = model(batch)
    assert (after - before).abs().max() > 1e-3
    assert (after - hf_model(**batch).logits).abs().max() < 1e-4
    model.blocks[1].mlp.W_out.zero_()  # a view: writes through to HF's down_proj
    assert hf_model.model.language_model.layers[1].mlp.down_proj.weight.abs().max() == 0


# ---- (e) errors ---------------------------------------------------------------------------------------------
def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(UnsupportedCheckpointError, match="config.json"):
        HookedAVModel.from_pretrained(tmp_path)
    with pytest.raises(UnsupportedCheckpointError, match="not a folder"):
        HookedAVModel.from_pretrained(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UnsupportedCheckpointError, match="JSON"):
        HookedAVModel.from_pretrained(tmp_path)


def test_unsupported_model_type_names_the_supported_ones(tmp_path, folders):
    config = json.loads((folders["vl"] / "config.json").read_text())
    config.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedCheckpointError, match="llama") as err:
        HookedAVModel.from_pretrained(tmp_path)
    for supported in ("qwen2_5_omni", "qwen2_5_omni_thinker", "qwen2_5_vl"):
        assert supported in str(err.value)


def test_pickled_weights_are_refused(tmp_path, folders):
    shutil.copy(folders["vl"] / "config.json", tmp_path / "config.json")
    torch.save(load_file(str(folders["vl"] / "model.safetensors")), tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsupportedCheckpointError, match="safetensors") as err:
        HookedAVModel.from_pretrained(tmp_path)
    assert "pytorch_model.bin" in str(err.value)


@pytest.mark.parametrize("edit", ["drop", "wrong_shape", "extra"])
def test_weights_that_do_not_fit_the_config(tmp_path, folders, edit):
    shutil.copy(folders["vl"] / "config.json", tmp_path / "config.json")
    state = load_file(str(folders["vl"] / "model.safetensors"))
    key = "model.layers.1.mlp.up_proj.weight"
    assert key in state
    if edit == "drop":
        del state[key]
    elif edit == "wrong_shape":
        state[key] = torch.zeros(3, 3)
    else:
        state["model.layers.7.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(UnsupportedCheckpointError) as err:
        HookedAVModel.from_pretrained(tmp_path)
    expected = {"drop": "layers.1.mlp.up_proj", "wrong_shape": "(3, 3)", "extra": "layers.7.mlp.up_proj"}[edit]
    assert expected in str(err.value)


def test_unrelated_module_is_rejected():
    with pytest.raises(UnsupportedCheckpointError, match="Linear") as err:
        HookedAVModel.from_hf_model(torch.nn.Linear(4, 4))
    assert "Qwen2_5_VLForConditionalGeneration" in str(err.value)


def test_model_without_processor(models, batches):
    hf_model = models["vl"][0]
    model = HookedAVModel.from_hf_model(hf_model)
    assert model.processor is None and model.tokenizer is None
    with pytest.raises(MissingProcessorError, match="processor"):
        model.prepare_inputs(PROMPT)
    with pytest.raises(MissingProcessorError):
        model.to_single_token("a")
    ids, mask = batches["vl"]["input_ids"][:, :40], batches["vl"]["attention_mask"][:, :40]
    assert not (ids == hf_model.config.video_token_id).any() and not (ids == hf_model.config.image_token_id).any()
    logits = model(input_ids=ids, attention_mask=mask)
    assert (logits - hf_model(input_ids=ids, attention_mask=mask).logits).abs().max() < 1e-4
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4)
    ref = hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                            eos_token_id=model.adapter.stop_token_ids())
    assert torch.equal(out.sequences, ref)


# ---- model_configs YAML -------------------------------------------------------------------------------------
def builtin_yaml(name: str) -> dict:
    path = builtin_config_dir() / f"{name}.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def write_spec(tmp_path: Path, data) -> Path:
    path = tmp_path / "family.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


def test_every_builtin_spec_parses_and_is_usable():
    specs = builtin_family_specs()
    assert {s.name for s in specs} == set(FAMILY.values())
    for spec in specs:
        assert spec.matches({"model_type": spec.model_types[0]})
        assert load_adapter_class(spec) is not None
        for cls in (spec.model_class, spec.config_class, spec.processor_class, *spec.wrappers):
            assert isinstance(resolve_class(cls), type), cls  # a transformers class, or a dotted path
        # The file round-trips through the parser unchanged.
        assert parse_family_spec(builtin_yaml(spec.name), "x") == spec
    omni = next(s for s in specs if s.name == "qwen2_5_omni")
    assert omni.checkpoint_key("thinker.model.layers.0.mlp.up_proj.weight") == \
        "model.language_model.layers.0.mlp.up_proj.weight"
    assert omni.checkpoint_key("thinker.audio_tower.conv1.weight") == "model.audio_tower.conv1.weight"
    assert omni.checkpoint_key("thinker.visual.merger.ln_q.weight") == "model.visual.merger.ln_q.weight"
    assert omni.checkpoint_key("thinker.lm_head.weight") == "lm_head.weight"
    assert omni.checkpoint_key("model.language_model.norm.weight") == "model.language_model.norm.weight"
    assert omni.checkpoint_key("talker.model.norm.weight") is None
    assert omni.checkpoint_key("token2wav.x.weight") is None


def test_a_family_naming_the_architecture_wins_over_a_model_type_match():
    """InternOmni and InternVL 2 share model_type "internvl_chat": the architecture decides, in either file order."""
    from hooked_av.model.family_spec import family_for_config

    specs = builtin_family_specs()
    for order in (specs, tuple(reversed(specs))):
        for arch, name in (("InternVLChatAudioModel", "internomni"), ("InternVLChatModel", "internvl2")):
            assert family_for_config({"model_type": "internvl_chat", "architectures": [arch]}, order).name == name


def test_unmodified_spec_written_to_a_file_loads(tmp_path):
    path = write_spec(tmp_path, builtin_yaml("qwen2_5_vl"))
    spec = load_family_spec(path)
    assert spec.name == "qwen2_5_vl" and spec.source == str(path)


def _drop(data, *keys):
    node = data
    for k in keys[:-1]:
        node = node[k]
    del node[keys[-1]]


def _set(data, value, *keys):
    node = data
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value


BAD_SPECS = {
    "missing_key": (lambda d: _drop(d, "hf", "model_class"), "hf.model_class"),
    "missing_section": (lambda d: _drop(d, "decoder"), "decoder"),
    "missing_layer_module": (lambda d: _drop(d, "decoder", "layer", "o"), "decoder.layer"),
    "unknown_top_level_key": (lambda d: _set(d, 1, "extra_section"), "extra_section"),
    "unknown_layer_key": (lambda d: _set(d, "x", "decoder", "layer", "bogus"), "bogus"),
    "unknown_nested_key": (lambda d: _set(d, "thinker.", "weights", "strip_prefixes"), "strip_prefixes"),
    "wrong_type_list": (lambda d: _set(d, "qwen2_5_vl", "match", "model_types"), "match.model_types"),
    "wrong_type_items": (lambda d: _set(d, [1, 2], "stop_tokens"), "stop_tokens"),
    "wrong_type_str": (lambda d: _set(d, 3, "hf", "model_class"), "hf.model_class"),
    "bad_rope_kind": (lambda d: _set(d, "yarn", "decoder", "rope", "kind"), "decoder.rope.kind"),
    "mrope_without_sections": (lambda d: _drop(d, "decoder", "rope", "sections_from"), "sections_from"),
    "bad_rename_pattern": (lambda d: _set(d, [["(unclosed", "x"]], "weights", "renames"), "weights.renames"),
    "bad_placeholder_modality": (lambda d: _set(d, "x", "placeholders", "smell"), "placeholders"),
    "no_model_types": (lambda d: _set(d, [], "match", "model_types"), "match.model_types"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_malformed_spec_names_file_and_key(tmp_path, case):
    edit, key = BAD_SPECS[case]
    data = builtin_yaml("qwen2_5_vl")
    edit(data)
    path = write_spec(tmp_path, data)
    with pytest.raises(ModelConfigError) as err:
        load_family_spec(path)
    assert str(path) in str(err.value)
    assert key in str(err.value)


@pytest.mark.parametrize("text", ["name: [unclosed\n", "- just\n- a list\n", ""], ids=["invalid", "list", "empty"])
def test_spec_that_is_not_a_yaml_mapping(tmp_path, text):
    path = write_spec(tmp_path, text)
    with pytest.raises(ModelConfigError) as err:
        load_family_spec(path)
    assert str(path) in str(err.value)


def test_a_malformed_shard_index_is_a_typed_error(tmp_path):
    from hooked_av.model.loading import safetensors_files

    (tmp_path / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(UnsupportedCheckpointError, match="weight_map"):
        safetensors_files(tmp_path)


def test_spec_with_an_unknown_activation_is_rejected(tmp_path):
    import yaml

    from hooked_av.model.family_spec import builtin_family_specs, load_family_spec

    source = yaml.safe_load(open(builtin_family_specs()[0].source).read())
    source["decoder"]["act_fn"] = "relu2"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(source))
    with pytest.raises(ModelConfigError, match="act_fn"):
        load_family_spec(path)


def test_mrope_sections_that_do_not_fit_the_head_are_a_typed_error():
    from hooked_av.testing.tiny import tiny_omni_thinker

    hf_model, _ = tiny_omni_thinker()
    hf_model.config.text_config.rope_parameters["mrope_section"] = [4, 6, 7]
    with pytest.raises(UnsupportedCheckpointError, match="rotary"):
        HookedAVModel.from_hf_model(hf_model)


# ---- a user's own family file (from_pretrained / from_hf_model family=...) ----------------------------------
def user_family(tmp_path: Path, edit=None) -> Path:
    """The VL family under another name, its adapter given as a dotted module path (as a user's own would be)."""
    data = builtin_yaml("qwen2_5_vl")
    data.update(name="my_vl", adapter="hooked_av.families.qwen2_5_vl")
    if edit is not None:
        edit(data)
    return write_spec(tmp_path, data)


def test_user_family_file_is_used(tmp_path, models, folders, batches, reference_logits):
    path = user_family(tmp_path)
    model = HookedAVModel.from_pretrained(folders["vl"], family=path)
    assert model.cfg.family == "my_vl" and model.adapter.spec.source == str(path)
    assert (model(batches["vl"]) - reference_logits["vl"]).abs().max() < 1e-5
    hf_model, processor, _ = models["vl"]
    wrapped = HookedAVModel.from_hf_model(hf_model, processor, family=str(path))
    assert wrapped.cfg.family == "my_vl"


USER_FAMILY_ERRORS = {
    "missing_file": (lambda p: p.parent / "nope.yaml", ModelConfigError, "does not exist"),
    "malformed": (lambda p: user_family(p.parent, lambda d: _drop(d, "hf", "model_class")), ModelConfigError,
                  "hf.model_class"),
    "wrong_adapter": (lambda p: user_family(p.parent, lambda d: _set(d, "my_pkg.no_such_adapter", "adapter")),
                      ModelConfigError, "'adapter' names 'my_pkg.no_such_adapter'"),
    "unknown_class": (lambda p: user_family(p.parent, lambda d: _set(d, "my_pkg.models.MyModel", "hf", "model_class")),
                      ModelConfigError, "class 'my_pkg.models.MyModel' named in a family file is not in module my_pkg"),
    "does_not_match_folder": (lambda p: user_family(p.parent, lambda d: _set(d, ["llama"], "match", "model_types")
                                                    or _set(d, [], "match", "architectures")),
                              UnsupportedCheckpointError, "family.yaml matches model_type='qwen2_5_vl'"),
}


@pytest.mark.parametrize("case", sorted(USER_FAMILY_ERRORS))
def test_user_family_file_errors_name_the_problem(tmp_path, folders, case):
    make, error, message = USER_FAMILY_ERRORS[case]
    path = make(tmp_path / "family.yaml")
    with pytest.raises(error) as err:
        HookedAVModel.from_pretrained(folders["vl"], family=path)
    assert message in str(err.value)
    if case == "malformed":
        assert str(path) in str(err.value)


def test_user_family_for_another_class_rejects_an_hf_model(tmp_path, models):
    path = user_family(tmp_path, lambda d: _set(d, "Qwen2_5OmniThinkerForConditionalGeneration", "hf", "model_class"))
    with pytest.raises(UnsupportedCheckpointError, match="Qwen2_5_VLForConditionalGeneration is not a supported"):
        HookedAVModel.from_hf_model(models["vl"][0], models["vl"][1], family=path)
