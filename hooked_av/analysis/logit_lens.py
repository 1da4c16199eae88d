"""Logit lens on chosen positions (paper Sec. 6, Fig. 5): what each layer's residual stream decodes to.

The residual stream after each block is passed through the model's own final norm and unembedding. By default
the positions are the audio positions, where the paper finds sound sources decoded in the last layers, often
in several languages (键盘, 马, ...): tokens are decoded to readable strings, never shown as byte symbols.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hooked_av.analysis.samples import per_sample_run
from hooked_av.data.caption_run import checkpoint_fields
from hooked_av.data.jsonl import output_file
from hooked_av.data.manifest import ManifestRow, Sample, sample_inputs
from hooked_av.model.errors import InputError, check_layer
from hooked_av.model.modality import Modality

PUNCTUATION = set(string.punctuation) | {"，", "。", "、", "：", "；", "！", "？", "（", "）", "“", "”", "…", "—"}


def is_junk_token(text: str) -> bool:
    """The default filter of decoded tokens, used when collecting words.

    Junk: empty or whitespace-only strings, strings of punctuation/symbols only, byte fragments that do not
    decode to complete characters (they contain U+FFFD), control characters, and special tokens like <|x|>.
    Everything else is kept, in any script (键盘 is a word).
    """
    stripped = text.strip()
    if not stripped or "\ufffd" in stripped:
        return True
    if stripped.startswith("<|") and stripped.endswith("|>"):
        return True
    if any(unicodedata.category(ch).startswith("C") for ch in stripped):
        return True
    return all(ch in PUNCTUATION or unicodedata.category(ch)[0] in "PS" for ch in stripped)


@dataclass
class LogitLensResult:
    layers: list[int]  # block indices: the residual after block l (resid_post)
    positions: Int[Tensor, "pos"]  # sequence positions decoded (of batch row `batch_index`)
    top_ids: Int[Tensor, "layer pos k"]
    top_probs: Float[Tensor, "layer pos k"]
    tokens: list[list[list[str]]]  # [layer][pos][rank] readable strings
    batch_index: int = 0
    input_tokens: list[str] | None = None  # [pos] the input token at each decoded position (e.g. "<|AUDIO|>")

    def top1(self) -> list[list[str]]:
        """[layer][pos] the most likely token: the table of paper Fig. 5."""
        return [[ranked[0] for ranked in row] for row in self.tokens]

    def words(self, last_layers: int = 5, top_k: int = 1,
              is_junk: Callable[[str], bool] = is_junk_token) -> list[str]:
        """Distinct decoded words over the last `last_layers` layers (top-`top_k` per position), junk removed.

        This is the word set the judge scores against the human audio captions ("latent audio understanding").
        Order is first appearance (by layer, then position, then rank), so the result is deterministic.
        """
        seen: dict[str, None] = {}
        for row in self.tokens[-last_layers:]:
            for ranked in row:
                for text in ranked[:top_k]:
                    word = text.strip()
                    if not is_junk(word):
                        seen.setdefault(word, None)
        return list(seen)

    def to_frame(self):
        """Long table: layer, position, input_token, rank, token_id, token, prob."""
        import pandas as pd

        inputs = self.input_tokens or [None] * len(self.positions)
        rows = [(layer, int(pos), inputs[pi], rank, int(self.top_ids[li, pi, rank]), self.tokens[li][pi][rank],
                 float(self.top_probs[li, pi, rank]))
                for li, layer in enumerate(self.layers) for pi, pos in enumerate(self.positions)
                for rank in range(self.top_ids.shape[-1])]
        return pd.DataFrame(rows, columns=["layer", "position", "input_token", "rank", "token_id", "token", "prob"])


def decode_tokens(tokenizer: Any, ids: Tensor) -> list:
    """Readable strings for a nested tensor of token ids (byte-level BPE symbols turned back into text)."""
    decoded: dict[int, str] = {}
    for i in set(ids.reshape(-1).tolist()):
        decoded[i] = tokenizer.decode([i])
    out: Any = [decoded[i] for i in ids.reshape(-1).tolist()]
    for size in reversed(ids.shape[1:]):
        out = [out[i:i + size] for i in range(0, len(out), size)]
    return out


def resolve_positions(model, modality_map, positions: str | Modality | Sequence[int] | Tensor,
                      batch_index: int) -> Tensor:
    if isinstance(positions, (str, Modality)):
        found = modality_map.positions(positions, batch_index)
        if found.numel() == 0:
            raise InputError(f"the batch has no {Modality.parse(positions).name.lower()} positions to decode")
        return found
    pos = torch.as_tensor(positions, dtype=torch.long).flatten()
    n = modality_map.codes.shape[1]
    outside = pos[(pos < 0) | (pos >= n)]
    if outside.numel():
        raise InputError(f"position {int(outside[0])} is outside the sequence: the batch has {n} positions "
                         f"(0..{n - 1}); cache.modality_map or model.to_str_tokens(batch) show what is where")
    return pos


@torch.no_grad()
def logit_lens(model, batch: Any = None, *, cache=None, positions: str | Sequence[int] | Tensor = "audio",
               layers: Sequence[int] | None = None, top_k: int = 5,
               batch_index: int | None = 0) -> LogitLensResult | list[LogitLensResult]:
    """Top-k tokens and probabilities of every (layer, position), from a cache or by running the model.

    Only the residual streams at `positions` are decoded, one layer at a time, so the memory is
    O(positions x vocab), never layers x positions x vocab. batch_index=None decodes every row of the batch
    (one model run) and returns a list.
    """
    layers = list(range(model.cfg.n_layers)) if layers is None else [check_layer(l, model.cfg.n_layers)
                                                                      for l in layers]
    if cache is None:
        if batch is None:
            raise InputError("logit_lens needs a batch or a cache")
        names = {f"blocks.{l}.hook_resid_post" for l in layers}
        _, cache = model.run_with_cache(batch, names_filter=lambda n: n in names)
    if batch_index is None:
        rows = cache[f"blocks.{layers[0]}.hook_resid_post"].shape[0]
        return [logit_lens(model, cache=cache, positions=positions, layers=layers, top_k=top_k, batch_index=b)
                for b in range(rows)]
    modality_map = cache.modality_map
    pos = resolve_positions(model, modality_map, positions, batch_index).to(model.device)
    top_ids, top_probs = [], []
    for layer in layers:
        resid = cache[f"blocks.{layer}.hook_resid_post"][batch_index, pos]
        probs = model.unembed(model.ln_final(resid[None]))[0].float().softmax(-1)
        p, i = probs.topk(top_k, dim=-1)
        top_ids.append(i)
        top_probs.append(p)
    ids = torch.stack(top_ids).cpu()
    tokenizer = model.adapter.require_processor("logit_lens (decoding tokens)").tokenizer
    inputs = getattr(cache, "input_ids", None)
    return LogitLensResult(layers=layers, positions=pos.cpu(), top_ids=ids, top_probs=torch.stack(top_probs).cpu(),
                           tokens=decode_tokens(tokenizer, ids), batch_index=batch_index,
                           input_tokens=None if inputs is None else decode_tokens(tokenizer, inputs[batch_index, pos]))


def latent_words_run(model, rows: Iterable[ManifestRow], out_path: str | Path, *,
                     prompt: str = "Describe what you see and hear.", last_layers: int = 5, top_k: int = 1,
                     fps: float = 2.0, sampling_rate: int = 16000, table: bool = False,
                     **prepare_kwargs: Any) -> Path:
    """For each sample, the logit-lens words at its audio positions over the last layers, one JSONL row each.

    Rows (sample_id, prompt, words, last_layers, top_k) are what `hooked_av.eval.score_captions(...,
    modalities=("latent_audio",))` scores against the audio captions: the paper's latent audio understanding.
    rows: manifest rows (`hooked_av.data.manifest.read_manifest`), as `caption_manifest` and `knockout_sweep` take
    them; sample ids must be unique. Each row records the checkpoint (`model`, `model_hash`, as caption rows do;
    a file another checkpoint wrote is refused). Resumable: samples already in the file are skipped; unreadable
    ones go to `<out>.errors.jsonl`. table=True decodes every layer and adds the top-1 table of Fig. 5 to each
    row (layers, positions, input_tokens, top1_ids, top1, top1_prob: [layer][position]), which `lens_from_row`
    turns back into a LogitLensResult for `plot_logit_lens`; the words are still those of the last `last_layers` layers.
    """
    layers = range(0 if table else max(0, model.cfg.n_layers - last_layers), model.cfg.n_layers)
    record = checkpoint_fields(model, output_file(out_path))

    def words(sample: Sample) -> dict[str, Any]:
        batch = model.prepare_inputs(prompt, **sample_inputs(sample), fps=fps, **prepare_kwargs)
        lens = logit_lens(model, batch, positions="audio", layers=layers, top_k=top_k)
        return {"words": lens.words(last_layers, top_k), "last_layers": last_layers, "top_k": top_k, **record,
                **(top1_table(lens) if table else {})}

    return per_sample_run(rows, out_path, "latent words", words, {"prompt": prompt}, fps, sampling_rate)


def top1_table(lens: LogitLensResult) -> dict[str, Any]:
    """The top-1 cells of a result as JSON fields (what `lens_from_row` reads)."""
    return {"layers": lens.layers, "positions": lens.positions.tolist(), "input_tokens": lens.input_tokens,
            "top1_ids": lens.top_ids[:, :, 0].tolist(), "top1": lens.top1(),
            "top1_prob": lens.top_probs[:, :, 0].tolist()}


def lens_from_row(row: dict[str, Any]) -> LogitLensResult:
    """A `latent_words_run(..., table=True)` row as a top-1 LogitLensResult (k = 1)."""
    if "top1" not in row:
        raise InputError(f"the logit-lens row of sample {row.get('sample_id')!r} has no top-1 table: it was written "
                         "without table=True (on the command line: without --table)")
    return LogitLensResult(layers=row["layers"], positions=torch.tensor(row["positions"], dtype=torch.long),
                           top_ids=torch.tensor(row["top1_ids"], dtype=torch.long)[:, :, None],
                           top_probs=torch.tensor(row["top1_prob"])[:, :, None],
                           tokens=[[[text] for text in layer] for layer in row["top1"]],
                           input_tokens=row["input_tokens"])
