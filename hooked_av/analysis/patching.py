"""Activation patching on multimodal batches, as `transformer_lens.patching` does for text.

A corrupted run (e.g. the same video with another sound) is patched with the activations of a clean run, one
(layer, positions) cell at a time, and a metric of the patched logits says how much of the clean behaviour each
cell restores. The corrupted prompt is embedded once (encoders included); the cells then run as rows of one batch
through the decoder, `max_rows_per_pass` at a time, each row's hook copying its clean values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from hooked_av.model.errors import InputError, check_layer
from hooked_av.model.modality import Modality

Positions = str | Sequence[int]


@dataclass
class PatchingResult:
    values: Float[Tensor, "layer cell"]  # the metric with that layer's activation patched at that cell's positions
    layers: list[int]
    labels: list[Any]  # one per cell: a position, or the name of a group of positions
    positions: list[list[int]]  # the positions each cell patches
    activation: str  # the hook patched: blocks.{layer}.hook_{activation}
    clean_value: float  # the metric of the clean run
    corrupted_value: float  # the metric of the unpatched corrupted run

    def to_frame(self):
        """Long table: layer, position (the cell's label), metric."""
        import pandas as pd

        return pd.DataFrame([(layer, label, float(self.values[li, ci])) for li, layer in enumerate(self.layers)
                             for ci, label in enumerate(self.labels)], columns=["layer", "position", "metric"])


def patch_cells(modality_map, positions: Positions | Mapping[str, Positions] | None,
                n_positions: int) -> tuple[list[Any], list[list[int]]]:
    """(labels, positions per cell): every position, the given ones, those of a modality, or named groups."""
    def resolve(item: Positions) -> list[int]:
        if isinstance(item, (str, Modality)):
            found = modality_map.positions(item).tolist()
            if not found:
                raise InputError(f"the batch has no {Modality.parse(item).name.lower()} positions to patch")
            return found
        found = [int(p) for p in item]
        outside = [p for p in found if not 0 <= p < n_positions]
        if outside:
            raise InputError(f"position {outside[0]} is outside the sequence (0..{n_positions - 1})")
        return found

    if positions is None:
        return list(range(n_positions)), [[p] for p in range(n_positions)]
    if isinstance(positions, Mapping):
        return list(positions), [resolve(group) for group in positions.values()]
    cells = resolve(positions)
    return cells, [[p] for p in cells]


def check_aligned(model, clean: Any, corrupted: Any) -> None:
    clean_map, corrupted_map = model.modality_map(clean), model.modality_map(corrupted)
    if clean_map.codes.shape != corrupted_map.codes.shape or not torch.equal(clean_map.codes, corrupted_map.codes):
        raise InputError(
            f"clean and corrupted runs must align position by position (same length, the same modality at every "
            f"position), so that a position means the same slot in both: clean {clean_map.runs()}, corrupted "
            f"{corrupted_map.runs()}. Use media of the same duration and size (e.g. swap the sound track for one "
            "of equal length)")
    if clean_map.codes.shape[0] != 1:
        raise InputError("activation_patch takes one sample (a batch of 1) for each run")


@torch.no_grad()
def activation_patch(model, corrupted: Any, clean: Any, metric: Callable[[Tensor], Tensor | float], *,
                     activation: str = "resid_pre", layers: Sequence[int] | None = None,
                     positions: Positions | Mapping[str, Positions] | None = None,
                     max_rows_per_pass: int = 16) -> PatchingResult:
    """The metric of the corrupted run with `blocks.{layer}.hook_{activation}` replaced by the clean run's values,
    for every layer x cell (as `transformer_lens.patching.get_act_patch_resid_pre` etc.).

    corrupted, clean: processor batches of one sample each that align position by position (the same modality at
    every position: e.g. the same video with two sounds of equal length). activation: a [batch, pos, d_model]
    hook of each block: "resid_pre", "resid_mid", "resid_post", "attn_out" or "mlp_out". positions: None (every
    position, one cell each), a list of positions, a modality name ("audio": each audio position), or a mapping
    name -> positions or modality, each group patched together in one cell ({"audio": "audio", "video": "video"}).
    metric: logits [1, pos, d_vocab] -> scalar, as in TransformerLens.
    """
    check_aligned(model, clean, corrupted)
    layers = list(range(model.cfg.n_layers)) if layers is None else [check_layer(l, model.cfg.n_layers)
                                                                      for l in layers]
    hook_names = {layer: model.hook_name(f"blocks.{layer}.hook_{activation}") for layer in layers}
    clean_logits, clean_cache = model.run_with_cache(clean, names_filter=list(hook_names.values()))
    prompt = model.embed_prompt(corrupted)
    labels, cells = patch_cells(prompt.modality_map, positions, prompt.input_ids.shape[1])
    corrupted_logits = model.unembed(model.run_blocks(prompt.inputs_embeds, prompt.positions, prompt.attention_mask))
    jobs = [(li, ci) for li in range(len(layers)) for ci in range(len(cells))]
    values = torch.empty(len(layers), len(cells))
    for start in range(0, len(jobs), max_rows_per_pass):
        chunk = jobs[start:start + max_rows_per_pass]
        hooks = [(hook_names[layers[li]], copy_hook(clean_cache[hook_names[layers[li]]][0],
                                                    [(row, cells[ci]) for row, (l2, ci) in enumerate(chunk)
                                                     if l2 == li]))
                 for li in sorted({li for li, _ in chunk})]
        n = len(chunk)
        with model.hooks(fwd_hooks=hooks):
            logits = model.unembed(model.run_blocks(prompt.inputs_embeds.expand(n, -1, -1),
                                                    prompt.positions.expand(-1, n, -1),
                                                    prompt.attention_mask.expand(n, -1)))
        for row, (li, ci) in enumerate(chunk):
            values[li, ci] = float(metric(logits[row:row + 1]))
    return PatchingResult(values=values, layers=layers, labels=labels, positions=cells, activation=activation,
                          clean_value=float(metric(clean_logits)), corrupted_value=float(metric(corrupted_logits)))


def copy_hook(clean: Float[Tensor, "pos d_model"], targets: list[tuple[int, list[int]]]):
    """A hook writing the clean values into the given rows' positions (rows of other cells pass unchanged)."""
    def hook(x: Tensor, hook) -> Tensor:
        x = x.clone()
        for row, positions in targets:
            x[row, positions] = clean[positions]
        return x

    return hook
