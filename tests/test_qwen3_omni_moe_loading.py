"""Loading Qwen3-Omni-MoE folders: thinker-only and full (talker / code2wav never read), per-expert hub layout."""

from __future__ import annotations

import json

import pytest
import safetensors
import torch
from safetensors.torch import load_file, save_file

from hooked_av import HookedAVModel, UnsupportedCheckpointError
from hooked_av.testing.tiny_qwen3_omni import full_qwen3_omni

from .test_loading import RecordingSafeOpen, write_shards

EXTRA_TENSORS = {"talker.model.layers.0.mlp.experts.0.gate_proj.weight": torch.ones(8, 8),
                 "talker.text_projection.linear_fc1.weight": torch.ones(8, 64),
                 "code2wav.decoder.0.conv.weight": torch.ones(4, 4)}


@pytest.fixture(scope="module")
def reference(q3omni, q3_batches):
    hf_model = q3omni[0]
    with torch.no_grad():
        return hf_model(**q3_batches["audio+video"]).logits


@pytest.fixture(scope="module")
def thinker_folder(tmp_path_factory, q3omni):
    hf_model, processor, _ = q3omni
    folder = tmp_path_factory.mktemp("q3_thinker")
    hf_model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_full_checkpoint(folder, hf_model, thinker_folder):
    """A full Qwen3-Omni folder in the hub layout (save_pretrained of the full class writes it: 'thinker.'
    prefix, one tensor per expert), sharded, plus talker and code2wav tensors in a shard of their own."""
    full_qwen3_omni(hf_model).save_pretrained(folder)
    thinker = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    write_shards(folder, thinker, EXTRA_TENSORS)
    config = json.loads((folder / "config.json").read_text())
    config.update(enable_audio_output=True, talker_config={"model_type": "qwen3_omni_moe_talker"})
    (folder / "config.json").write_text(json.dumps(config))
    for f in thinker_folder.iterdir():
        if f.name not in ("config.json", "model.safetensors", "generation_config.json"):
            (folder / f.name).write_bytes(f.read_bytes())
    return set(thinker)


def test_thinker_folder_in_the_per_expert_layout_loads(thinker_folder, q3omni, q3_batches, reference):
    hf_model = q3omni[0]
    written = load_file(str(thinker_folder / "model.safetensors"))
    assert "model.layers.0.mlp.experts.7.gate_proj.weight" in written  # HF writes the hub's per-expert layout
    assert not any("gate_up_proj" in k for k in written)
    model = HookedAVModel.from_pretrained(thinker_folder)
    assert model.cfg.family == "qwen3_omni_moe" and model.processor is not None
    loaded, original = model.adapter.hf_model.state_dict(), hf_model.state_dict()
    assert loaded.keys() == original.keys()
    assert all(torch.equal(loaded[k], original[k]) for k in original)
    assert (model(q3_batches["audio+video"]) - reference).abs().max() < 1e-5


def test_full_checkpoint_reads_only_the_thinker(tmp_path, monkeypatch, q3omni, thinker_folder, q3_batches,
                                                reference):
    thinker_keys = write_full_checkpoint(tmp_path, q3omni[0], thinker_folder)
    assert any(k.startswith("thinker.model.layers.0.mlp.experts.0.") for k in thinker_keys)
    RecordingSafeOpen.read = []
    monkeypatch.setattr(safetensors, "safe_open", RecordingSafeOpen)
    model = HookedAVModel.from_pretrained(tmp_path)
    monkeypatch.undo()
    assert sorted(RecordingSafeOpen.read) == sorted(thinker_keys)  # each thinker tensor once, nothing else
    assert type(model.adapter.hf_model).__name__ == "Qwen3OmniMoeThinkerForConditionalGeneration"
    assert not any(k.startswith(("talker", "code2wav")) for k in model.adapter.hf_model.state_dict())
    assert (model(q3_batches["audio+video"]) - reference).abs().max() < 1e-5


def test_a_missing_expert_is_named(tmp_path, thinker_folder):
    for f in thinker_folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["model.layers.2.mlp.experts.5.up_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(UnsupportedCheckpointError, match=r"layers\.2\.mlp\.experts\.gate_up_proj.*\[5\]"):
        HookedAVModel.from_pretrained(tmp_path)


def test_bfloat16_loading_equals_hf_own_loading_bit_for_bit(thinker_folder, q3_batches):
    """Loaded in bf16 as HF loads it (rotary inv_freq stays fp32), the hooked model's logits and routing are
    HF's exactly: the order of operations is HF's, so no near-tied expert flips."""
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    model = HookedAVModel.from_pretrained(thinker_folder, dtype=torch.bfloat16)
    hf_model = Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(thinker_folder, dtype=torch.bfloat16)
    ours, theirs = model.adapter.hf_model.state_dict(), hf_model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]) for k in theirs)
    batch = q3_batches["use_audio_in_video"]
    with torch.no_grad():
        logits, cache = model.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_expert_indices"))
        ref = hf_model(**batch, output_router_logits=True)
    assert logits.dtype == torch.bfloat16 and torch.equal(logits, ref.logits)
    for layer, router_logits in enumerate(ref.router_logits):
        indices = torch.topk(torch.softmax(router_logits, -1, dtype=torch.float32), 2, dim=-1).indices
        assert torch.equal(cache[f"blocks.{layer}.mlp.hook_expert_indices"][0], indices)


def test_spec_maps_hub_names_and_expert_parts():
    from hooked_av.model.family_spec import builtin_family_specs

    spec = next(s for s in builtin_family_specs() if s.name == "qwen3_omni_moe")
    name = spec.checkpoint_key("thinker.model.layers.3.mlp.experts.17.up_proj.weight")
    assert name == "model.language_model.layers.3.mlp.experts.17.up_proj.weight"
    assert spec.expert_part(name) == ("model.language_model.layers.3.mlp.experts.gate_up_proj", 17, 1, 2)
    assert spec.expert_part(name.replace("up_proj", "down_proj")) == (
        "model.language_model.layers.3.mlp.experts.down_proj", 17, 0, 1)
    assert spec.expert_part("model.language_model.layers.3.mlp.gate.weight") is None
    assert spec.checkpoint_key("code2wav.decoder.0.conv.weight") is None
    assert spec.checkpoint_key("talker.model.norm.weight") is None


@pytest.mark.parametrize("edit, key", [
    (lambda d: d["weights"].update(stack_experts=[{"parts": [r"(.*)\.experts\.gate"], "into": "x"}]), "two groups"),
    (lambda d: d["weights"].update(stack_experts=[{"parts": "x", "into": "y"}]), "weights.stack_experts"),
    (lambda d: d["decoder"]["layer"].pop("experts"), "whole MLP"),
    (lambda d: [d["decoder"]["layer"].pop(k) for k in ("router", "experts", "gate")], "whole MLP"),
])
def test_malformed_moe_spec_is_a_typed_error(tmp_path, edit, key):
    import yaml

    from hooked_av import ModelConfigError
    from hooked_av.model.family_spec import builtin_config_dir, load_family_spec

    data = yaml.safe_load((builtin_config_dir() / "qwen3_omni_moe.yaml").read_text())
    edit(data)
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ModelConfigError, match=key):
        load_family_spec(path)
