"""TransformerLens' ActivationCache, aware of the merged multimodal embedding and of the modality map."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from transformer_lens import ActivationCache

from hooked_av.model.modality import ModalityMap


class AVActivationCache(ActivationCache):
    """An ActivationCache that also carries the batch's modality map and input_ids.

    The residual stream starts from `hook_inputs_embeds` (token embeddings with encoder features scattered into
    the placeholder positions), so that is the "embed" component `decompose_resid` returns: the components then
    sum to the residual stream at every position, multimodal ones included.
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

    def decompose_resid(self, *args: Any, incl_embeds: bool = True, **kwargs: Any):
        if not incl_embeds or "hook_inputs_embeds" not in self.cache_dict:
            return super().decompose_resid(*args, incl_embeds=incl_embeds, **kwargs)
        token_embed = self.cache_dict["hook_embed"] if "hook_embed" in self.cache_dict else None
        self.cache_dict["hook_embed"] = self.cache_dict["hook_inputs_embeds"]
        self.has_embed = True
        try:
            return super().decompose_resid(*args, incl_embeds=True, **kwargs)
        finally:
            if token_embed is None:
                del self.cache_dict["hook_embed"]
                self.has_embed = False
            else:
                self.cache_dict["hook_embed"] = token_embed
