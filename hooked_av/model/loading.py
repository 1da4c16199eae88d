"""Loading a local HF checkpoint folder: config.json picks the family; weights come from safetensors only.

Tensors the family never uses (a full Qwen2.5-Omni's talker and token2wav) are not read from disk at all.
Per-expert tensors of a mixture-of-experts checkpoint are written into HF's fused expert parameters as they are
read (`weights.stack_experts` of the family file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hooked_av.model.errors import UnsupportedCheckpointError
from hooked_av.model.family_spec import FamilySpec, family_for_config, is_transformers_class, resolve_class

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json")


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise UnsupportedCheckpointError(f"{folder} has no config.json: give the folder of an HF checkpoint")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UnsupportedCheckpointError(f"{path} is not valid JSON ({err})") from err


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise UnsupportedCheckpointError(f"{index} is not a safetensors index with a 'weight_map' ({err!r})") from err
        return [folder / s for s in sorted(set(weight_map.values()))]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        others = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        hint = f" (found {others}: convert them to safetensors; pickled weights are never loaded)" if others else ""
        raise UnsupportedCheckpointError(f"{folder} holds no .safetensors weights{hint}")
    return files


def hf_config_for(spec: FamilySpec, config: dict[str, Any], folder: Path | None = None):
    """The family's config object; a config class with `from_checkpoint_folder(folder, config)` builds it from
    the folder (it reads files config.json names, e.g. VideoLLaMA2's separate vision tower folder)."""
    config_class = resolve_class(spec.config_class)
    if folder is not None and hasattr(config_class, "from_checkpoint_folder"):
        return config_class.from_checkpoint_folder(folder, config)
    if spec.full_config_key and spec.full_config_key in config:  # a full model: take the part we load
        config = config[spec.full_config_key]
    config = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "transformers_version")}
    return config_class(**config)


class ExpertStacker:
    """Writes per-expert checkpoint tensors into their fused [n_experts, ...] parameters as they are read, so a
    layer's experts are never held twice."""

    def __init__(self, spec: FamilySpec, shapes: dict[str, tuple[int, ...]], folder: Path):
        self.spec, self.shapes, self.folder = spec, shapes, folder
        self.filled: dict[str, torch.Tensor] = {}  # [n_experts, n_parts] bool per fused parameter

    def place(self, state: dict[str, torch.Tensor], name: str, tensor: torch.Tensor) -> bool:
        """Put `tensor` into its fused parameter; False when it is not a per-expert tensor of a known one."""
        found = self.spec.expert_part(name)
        if found is None or found[0] not in self.shapes:
            return False
        target, expert, part, n_parts = found
        shape = self.shapes[target]
        rows = tensor.shape[0]
        if expert >= shape[0] or rows * n_parts != shape[1] or tuple(tensor.shape[1:]) != shape[2:]:
            raise UnsupportedCheckpointError(
                f"{self.folder}: expert tensor {name} {tuple(tensor.shape)} does not fit {target} {shape}")
        if target not in state:
            state[target] = torch.empty(shape, dtype=tensor.dtype, device=tensor.device)
            self.filled[target] = torch.zeros(shape[0], n_parts, dtype=torch.bool)
        state[target][expert, part * rows:(part + 1) * rows] = tensor
        self.filled[target][expert, part] = True
        return True

    def check_complete(self) -> None:
        for target, filled in self.filled.items():
            if not bool(filled.all()):
                missing = sorted({int(e) for e in (~filled).nonzero()[:, 0]})
                raise UnsupportedCheckpointError(
                    f"{self.folder}: {target} lacks the tensors of experts {missing[:8]}")


def read_state_dict(spec: FamilySpec, folder: Path, dtype: torch.dtype | None, device: str | torch.device,
                    shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    state: dict[str, torch.Tensor] = {}
    stacker = ExpertStacker(spec, shapes, folder)
    for file in safetensors_files(folder):
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            for key in f.keys():
                name = spec.checkpoint_key(key)
                if name is None:
                    continue
                tensor = f.get_tensor(key)
                tensor = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
                if not stacker.place(state, name, tensor):
                    state[name] = tensor
    stacker.check_complete()
    return state


def build_empty(spec: FamilySpec, hf_config) -> nn.Module:
    """The HF model with parameters on the meta device (buffers real), ready for assign-loading."""
    from accelerate import init_empty_weights

    hf_config._attn_implementation = "sdpa"
    with init_empty_weights(include_buffers=False):
        return resolve_class(spec.model_class)(hf_config)


def load_hf_model(folder: Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                  spec: FamilySpec | None = None) -> tuple[nn.Module, FamilySpec]:
    """The HF model of a checkpoint folder; `spec` (a user's family) must match its config.json, else the
    family is the first built-in one that does."""
    if not folder.is_dir():
        raise UnsupportedCheckpointError(f"{folder} is not a folder: give the local folder of an HF checkpoint")
    config = read_config(folder)
    spec = family_for_config(config, None if spec is None else (spec,))
    hf_config = hf_config_for(spec, config, folder)
    device = device or "cpu"
    model = build_empty(spec, hf_config)
    expected_shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    state = read_state_dict(spec, folder, dtype, device, expected_shapes)
    if hasattr(model, "convert_checkpoint"):  # tensors stored in another layout (InternLM2's packed wqkv)
        state = model.convert_checkpoint(state)
    if hasattr(model, "external_state_dict"):  # weights kept outside the folder (VideoLLaMA2's SigLIP tower)
        state.update(model.external_state_dict(dtype, device))
    expected = set(expected_shapes)
    tied = getattr(hf_config.get_text_config(), "tie_word_embeddings", False) or getattr(
        hf_config, "tie_word_embeddings", False)
    missing = sorted(expected - set(state) - ({"lm_head.weight"} if tied else set()))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise UnsupportedCheckpointError(
            f"the weights in {folder} do not fit its config ({spec.name}): "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    for name, tensor in state.items():
        if expected_shapes[name] != tuple(tensor.shape):
            raise UnsupportedCheckpointError(f"{folder}: tensor {name} has shape {tuple(tensor.shape)}, the config "
                                             f"says {expected_shapes[name]}")
    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.tie_weights()
    model.to(device)  # parameters already hold `dtype`; buffers keep HF's dtypes (fp32 rotary inv_freq)
    return model.eval(), spec


def load_processor(folder: Path, spec: FamilySpec) -> Any:
    """The folder's processor, or None when it has no processor files. Never runs remote code: a family whose
    processor is not in transformers names its own class (a dotted path with a `from_pretrained`)."""
    if not any((folder / f).is_file() for f in PROCESSOR_FILES):
        return None
    if not is_transformers_class(spec.processor_class):
        return resolve_class(spec.processor_class).from_pretrained(folder)
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
