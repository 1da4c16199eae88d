"""TransformerLens' ActivationCache, aware of the merged multimodal embedding, of residual injections after
blocks (Qwen3's DeepStack) and of the modality map."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from transformer_lens import ActivationCache
from transformer_lens.utilities import Slice

from hooked_av.model.modality import ModalityMap


class AVActivationCache(ActivationCache):
    """An ActivationCache that also carries the batch's modality map and input_ids.

    The residual stream starts from `hook_inputs_embeds` (token embeddings with encoder features scattered into
    the placeholder positions), so that is the "embed" component `decompose_resid` returns; with mode "all" a
    block's injection (`blocks.{l}.hook_deepstack`) follows its MLP output as the component `{l}_deepstack`. The
    components then sum to the residual stream at every position, multimodal ones included.
    """

    def __init__(self, cache_dict: dict, model: Any, has_batch_dim: bool = True,
                 modality_map: ModalityMap | None = None, input_ids: Tensor | None = None):
        super().__init__(cache_dict, model, has_batch_dim=has_batch_dim)
        self.modality_map = modality_map
        self.input_ids = input_ids  # [batch, pos] of the run, so results can name their positions' tokens

    def __getitem__(self, key: Any):
        if isinstance(key, str) and key not in self.cache_dict:
            key = self.model.hook_name(key)  # blocks.-1.… as the model's hooks accept it; typos get suggestions
        return super().__getitem__(key)

    @contextmanager
    def _inputs_embeds_as_embed(self, incl_embeds: bool) -> Iterator[None]:
        if not incl_embeds or "hook_inputs_embeds" not in self.cache_dict:
            yield
            return
        token_embed = self.cache_dict.get("hook_embed")
        had_embed = self.has_embed
        self.cache_dict["hook_embed"] = self.cache_dict["hook_inputs_embeds"]
        self.has_embed = True
        try:
            yield
        finally:
            if token_embed is None:
                del self.cache_dict["hook_embed"]
            else:
                self.cache_dict["hook_embed"] = token_embed
            self.has_embed = had_embed

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False, mode: str = "all",
                        apply_ln: bool = False, pos_slice: Any = None, incl_embeds: bool = True,
                        return_labels: bool = False):
        layer = self.model.cfg.n_layers if layer is None or layer == -1 else layer
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        with self._inputs_embeds_as_embed(incl_embeds):
            components, labels = super().decompose_resid(layer, mlp_input, mode, False, pos_slice, incl_embeds, True)
        if mode == "all":
            components, labels = self._insert_injections(components, labels, layer, pos_slice)
        if apply_ln:
            components = self.apply_ln_to_stack(components, layer, pos_slice=pos_slice, mlp_input=mlp_input)
        return (components, labels) if return_labels else components

    def _insert_injections(self, components: torch.Tensor, labels: list[str], layer: int,
                           pos_slice: Slice) -> tuple[torch.Tensor, list[str]]:
        parts, names = list(components), list(labels)
        for l in range(layer):
            name = self.model.blocks[l].injection_hook_name
            key = f"blocks.{l}.{name}"
            if name is None or key not in self.cache_dict:
                continue
            at = names.index(f"{l}_mlp_out") + 1
            parts.insert(at, pos_slice.apply(self.cache_dict[key], dim=-2))
            names.insert(at, f"{l}_{name.removeprefix('hook_')}")
        return torch.stack(parts), names
