"""Attention by modality (paper Sec. 5, Fig. 4): where generated tokens look, layer by layer.

Computed from the attention rows of the decode steps during KV-cached generation: each step's query is one
generated token, so a layer's pattern is a [batch, head, 1, N] row, reduced at once to per-group sums.
No N x N pattern is ever formed for the prompt, which stays on fused attention.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from hooked_av.analysis.samples import decoded_samples, per_sample_run
from hooked_av.data.jsonl import iter_rows
from hooked_av.data.manifest import ManifestRow, Sample, sample_inputs
from hooked_av.model.errors import check_layer
from hooked_av.model.modality import Modality

# The paper's groups. "other" collects every key no named group claims (chat template, special tokens and the
# tokens generated before the current one), so the shares of a query sum to 1.
DEFAULT_GROUPS: dict[str, tuple[str, ...]] = {"video": ("video",), "audio": ("audio",), "image": ("image",),
                                              "text": ("text",)}


@dataclass
class ModalityAttention:
    """Mean share of attention from generated tokens to each group of keys, per layer (and per head)."""

    groups: list[str]  # the named groups, then "other"
    layers: list[int]
    per_head: Float[Tensor, "layer head group"]  # mean over the generated-token queries of all batch rows
    group_sizes: list[dict[str, int]]  # prompt positions per group, per batch row
    n_queries: int  # generated-token queries averaged over
    generated_text: list[str]
    sample_id: str | None = None  # set by attention_over_samples

    @property
    def shares(self) -> Float[Tensor, "layer group"]:
        return self.per_head.mean(1)

    def share(self, group: str) -> Tensor:
        return self.shares[:, self.groups.index(group)]

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.shares.numpy(), index=pd.Index(self.layers, name="layer"), columns=self.groups)

    def to_row(self) -> dict[str, Any]:
        """The result as a JSON object (what `attention_run` writes; `from_row` reads it back exactly)."""
        return {"groups": self.groups, "layers": self.layers, "per_head": self.per_head.tolist(),
                "group_sizes": self.group_sizes, "n_queries": self.n_queries, "generated_text": self.generated_text}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ModalityAttention:
        return cls(groups=row["groups"], layers=row["layers"], per_head=torch.tensor(row["per_head"]),
                   group_sizes=row["group_sizes"], n_queries=row["n_queries"], generated_text=row["generated_text"],
                   sample_id=row.get("sample_id"))


def group_index(modality_codes: Tensor, groups: Mapping[str, Sequence[str]]) -> Tensor:
    """[batch, pos] group of each position; positions of no named group get len(groups) ("other")."""
    index = torch.full_like(modality_codes, len(groups))
    for g, modalities in enumerate(groups.values()):
        for m in modalities:
            index[modality_codes == Modality.parse(m)] = g
    return index


@torch.no_grad()
def attention_by_modality(model, batch: Any, *, max_new_tokens: int = 32,
                          groups: Mapping[str, Sequence[str]] = DEFAULT_GROUPS,
                          layers: Sequence[int] | None = None, **generate_kwargs: Any) -> ModalityAttention:
    """Generate greedily and average, over generated-token queries, the attention each group of keys receives.

    The queries are the generated tokens fed back at decode steps; a stop token and the padding after it are
    not queries. Peak memory above the model and KV cache is one [batch, head, N] row per hooked layer.
    """
    layers = [check_layer(l, model.cfg.n_layers) for l in (range(model.cfg.n_layers) if layers is None else layers)]
    groups = dict(groups)
    n_groups = len(groups) + 1
    prompt_groups = group_index(model.modality_map(batch).codes, groups)  # [batch, N]
    steps: dict[int, list[Tensor]] = {layer: [] for layer in layers}

    def record(pattern: Tensor, hook) -> None:  # [batch, head, 1, keys]
        b, h, _, keys = pattern.shape
        key_groups = torch.cat([prompt_groups, prompt_groups.new_full((b, keys - prompt_groups.shape[1]),
                                                                      len(groups))], dim=1)
        sums = torch.zeros(b, h, n_groups, dtype=torch.float32, device=pattern.device)
        sums.scatter_add_(2, key_groups[:, None, :].expand(-1, h, -1), pattern[:, :, 0].float())
        steps[hook.layer()].append(sums)

    hooks = [(f"blocks.{layer}.attn.hook_pattern", record) for layer in layers]
    out = model.generate(batch, max_new_tokens=max_new_tokens, decode_fwd_hooks=hooks, **generate_kwargs)
    # The stop tokens generation used (the caller's, else the family's): a stop token ends a row's queries.
    queries = is_query(out.new_tokens, model.stop_tensor(generate_kwargs.get("stop_token_ids")))
    n_steps = len(steps[layers[0]])
    valid = queries[:, :n_steps].T.float()  # [step, batch]
    n_queries = int(valid.sum())
    per_head = torch.stack([(torch.stack(steps[layer]) * valid[:, :, None, None]).sum((0, 1)) for layer in layers])
    per_head = per_head / max(n_queries, 1)
    names = list(groups) + ["other"]
    sizes = [{name: int((row == g).sum()) for g, name in enumerate(names)} for row in prompt_groups]
    return ModalityAttention(groups=names, layers=layers, per_head=per_head.cpu(), group_sizes=sizes,
                             n_queries=n_queries, generated_text=out.text)


def attention_over_samples(model, rows: Iterable[ManifestRow], *, prompt: str = "Describe what you see and hear.",
                           max_new_tokens: int = 32, fps: float = 2.0, sampling_rate: int = 16000,
                           **kwargs: Any) -> list[ModalityAttention]:
    """`attention_by_modality` for each manifest row (decoded once, the sound interleaved into the video when it is
    the video's own track), under a progress bar; unreadable samples are logged and left out. The results carry
    their sample_id and feed `aggregate_attention`. kwargs: groups, layers and generation settings."""
    results = []
    for sample in decoded_samples(rows, "attention by modality", fps, sampling_rate):
        batch = model.prepare_inputs(prompt, **sample_inputs(sample), fps=fps)
        result = attention_by_modality(model, batch, max_new_tokens=max_new_tokens, **kwargs)
        result.sample_id = sample.sample_id
        results.append(result)
    return results


def attention_run(model, rows: Iterable[ManifestRow], out_path: str | Path, *,
                  prompt: str = "Describe what you see and hear.", max_new_tokens: int = 32, fps: float = 2.0,
                  sampling_rate: int = 16000, **kwargs: Any) -> Path:
    """`attention_over_samples` written to JSONL, one row per sample (`ModalityAttention.to_row` with sample_id and
    prompt), resumable, unreadable samples in `<out>.errors.jsonl`; the step `run_sharded` shards over GPUs.
    `read_attention(out)` gives the results back for `aggregate_attention`."""

    def attend(sample: Sample) -> dict[str, Any]:
        batch = model.prepare_inputs(prompt, **sample_inputs(sample), fps=fps)
        return attention_by_modality(model, batch, max_new_tokens=max_new_tokens, **kwargs).to_row()

    return per_sample_run(rows, out_path, "attention by modality", attend, {"prompt": prompt}, fps, sampling_rate)


def read_attention(path: str | Path, prompt: str | None = None) -> list[ModalityAttention]:
    """The rows of `attention_run` (those of one prompt, if given) as ModalityAttention results."""
    return [ModalityAttention.from_row(row) for row in iter_rows(path) if prompt is None or row["prompt"] == prompt]


def is_query(new_tokens: Tensor, stops: Tensor) -> Tensor:
    """[batch, new] True where a generated token was fed back as a query: before and excluding a row's stop."""
    is_stop = torch.isin(new_tokens, stops).int()
    return is_stop.cumsum(dim=1) == 0


@dataclass
class AggregatedAttention:
    groups: list[str]
    layers: list[int]
    mean: np.ndarray  # [layer, group], mean over samples
    ci_low: np.ndarray
    ci_high: np.ndarray
    n_samples: int
    confidence: float = 0.95  # of the percentile-bootstrap interval [ci_low, ci_high]

    def to_frame(self):
        """Long table: layer, group, mean, ci_low, ci_high, n_samples (shares as fractions)."""
        import pandas as pd

        return pd.DataFrame([(layer, group, float(self.mean[li, gi]), float(self.ci_low[li, gi]),
                              float(self.ci_high[li, gi]), self.n_samples)
                             for li, layer in enumerate(self.layers) for gi, group in enumerate(self.groups)],
                            columns=["layer", "group", "mean", "ci_low", "ci_high", "n_samples"])


def aggregate_attention(results: Sequence[ModalityAttention], confidence: float = 0.95,
                        n_boot: int = 2000, seed: int = 0) -> AggregatedAttention:
    """Mean over samples of the per-sample shares, with percentile-bootstrap confidence intervals."""
    if not results:
        raise ValueError("no results to aggregate")
    shares = np.stack([r.shares.numpy() for r in results])  # [sample, layer, group]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(results), size=(n_boot, len(results)))
    boot = shares[idx].mean(1)  # [boot, layer, group]
    alpha = (1 - confidence) / 2
    return AggregatedAttention(groups=results[0].groups, layers=results[0].layers, mean=shares.mean(0),
                               ci_low=np.quantile(boot, alpha, axis=0), ci_high=np.quantile(boot, 1 - alpha, axis=0),
                               n_samples=len(results), confidence=confidence)
