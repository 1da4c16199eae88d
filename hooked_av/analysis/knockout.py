"""Attention knockout (paper Sec. 7, Eq. 7, Fig. 6): block target queries from attending to source keys.

A knockout edits `blocks.{l}.attn.hook_attn_mask`, so knocked-out layers stay on fused attention. The sweep of
the paper (every source modality x every centred window of layers) computes the prompt prefix once per sample:
no position before the first target is affected by any knockout, so all configurations continue, batched, from
one shared KV cache of that prefix (never copied per configuration).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hooked_av.data.caption_run import checkpoint_fields
from hooked_av.data.jsonl import append_rows, read_done
from hooked_av.data.manifest import PAPER_PROMPTS, ManifestRow, check_unique_ids, load_sample, sample_inputs
from hooked_av.model.errors import EmptySelectionError, HookedAVError, InputError, check_layer
from hooked_av.model.hooked_av_model import DecodeState, Prompt, Sampling, next_position
from hooked_av.model.kv_cache import SharedPrefixKVCache
from hooked_av.model.modality import Modality, ModalityMap

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Knockout:
    """T ↛ S at some layers (and optionally heads): queries at `targets` cannot attend to keys at `sources`.

    sources / targets: modality names ("audio", "video", "image", "text", "generated", ...) or explicit
    absolute positions. targets="generated" means the queries of generated tokens; with
    `include_last_prompt_position=True` (default) it also covers the last prompt position, whose query predicts
    the first generated token, so that every generated token is produced under the knockout. With False, the
    first generated token is produced unblocked.
    """

    sources: tuple[str | int, ...]
    layers: tuple[int, ...]
    targets: tuple[str | int, ...] = ("generated",)
    heads: tuple[int, ...] | None = None
    include_last_prompt_position: bool = True

    def __post_init__(self) -> None:
        for name in ("sources", "targets", "layers"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, (str, int)) else tuple(value))
        if self.heads is not None:
            object.__setattr__(self, "heads", tuple(self.heads))
        for item in self.sources + self.targets:
            if isinstance(item, str):
                Modality.parse(item)

    def positions(self, which: tuple[str | int, ...], codes: Tensor, prompt_len: int, total_len: int) -> Tensor:
        """[batch, total_len] bool over absolute positions (prompt followed by generated ones)."""
        batch = codes.shape[0]
        out = torch.zeros(batch, total_len, dtype=torch.bool, device=codes.device)
        for item in which:
            if isinstance(item, int):
                out[:, item] = True
            elif Modality.parse(item) == Modality.GENERATED:
                out[:, prompt_len:] = True
            else:
                out[:, :prompt_len] |= codes == Modality.parse(item)
        return out

    def target_positions(self, codes: Tensor, prompt_len: int, total_len: int) -> Tensor:
        out = self.positions(self.targets, codes, prompt_len, total_len)
        if self.include_last_prompt_position and "generated" in self.targets:
            out[:, prompt_len - 1] = True
        return out

    def check_selects(self, codes: Tensor, prompt_len: int, total_len: int) -> None:
        """Raise EmptySelectionError unless sources and targets each select a position in every batch row:
        a knockout that blocks nothing would label the unblocked output as knocked out."""
        for name, which in (("sources", self.sources), ("targets", self.targets)):
            outside = [p for p in which if isinstance(p, int) and not 0 <= p < total_len]
            if outside:
                raise EmptySelectionError(f"knockout {name} {which}: position {outside[0]} is outside the sequence "
                                          f"(0..{total_len - 1}: {prompt_len} prompt positions + generated ones)")
            selected = (self.positions(which, codes, prompt_len, total_len) if name == "sources"
                        else self.target_positions(codes, prompt_len, total_len))
            empty = (~selected.any(1)).nonzero().flatten().tolist()
            if empty:
                raise EmptySelectionError(f"knockout {name} {which} select no position of batch row {empty[0]}: "
                                          f"it has no {' / '.join(map(str, which))} positions, so the knockout "
                                          "would block nothing")


def layer_windows(n_layers: int, window: int = 9) -> list[tuple[int, tuple[int, ...]]]:
    """(centre, layers) for every centre layer: `window` consecutive layers centred on it, clipped at the ends."""
    if window < 1:
        raise ValueError("window must be >= 1")
    before = (window - 1) // 2
    after = window - 1 - before
    return [(c, tuple(range(max(0, c - before), min(n_layers, c + after + 1)))) for c in range(n_layers)]


def knockout_hooks(model, knockouts: Sequence[Knockout | None], prompt_map: ModalityMap,
                   max_len: int) -> list[tuple[str, Any]]:
    """Hooks on hook_attn_mask applying `knockouts[i]` to batch row i (None: no knockout for that row).

    A single knockout may be given for a batch of any size. Layers no knockout touches get no hook.
    """
    codes = prompt_map.codes
    if len(knockouts) == 1 and codes.shape[0] > 1:
        knockouts = list(knockouts) * codes.shape[0]
    if len(knockouts) != codes.shape[0]:
        raise InputError(f"{len(knockouts)} knockouts for a batch of {codes.shape[0]} rows")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    prompt_len = codes.shape[1]
    rows = range(len(knockouts))
    blocked_keys = torch.zeros(len(knockouts), max_len, dtype=torch.bool, device=codes.device)
    target_queries = torch.zeros_like(blocked_keys)
    for r, ko in zip(rows, knockouts):
        if ko is not None:
            ko.check_selects(codes[r:r + 1], prompt_len, max_len)
            blocked_keys[r] = ko.positions(ko.sources, codes[r:r + 1], prompt_len, max_len)[0]
            target_queries[r] = ko.target_positions(codes[r:r + 1], prompt_len, max_len)[0]
    hooks = []
    for layer in range(n_layers):
        heads = torch.zeros(len(knockouts), n_heads, dtype=torch.bool, device=codes.device)
        for r, ko in zip(rows, knockouts):
            if ko is not None and layer in {check_layer(l, n_layers) for l in ko.layers}:
                heads[r, list(ko.heads) if ko.heads is not None else slice(None)] = True
        if heads.any():
            hooks.append((f"blocks.{layer}.attn.hook_attn_mask", _mask_hook(heads, blocked_keys, target_queries)))
    return hooks


def _mask_hook(heads: Tensor, blocked_keys: Tensor, target_queries: Tensor):
    per_head = not bool((heads == heads[:, :1]).all())

    def hook(mask: Tensor, hook) -> Tensor:  # additive, [batch, 1, q, k]
        q_len, k_len = mask.shape[-2:]
        queries = target_queries[:, k_len - q_len:k_len]  # query i sits at k_len - q_len + i
        block = queries[:, None, :, None] & blocked_keys[:, None, None, :k_len]
        block = block & (heads[:, :, None, None] if per_head else heads[:, :1, None, None])
        if per_head:
            mask = mask.expand(-1, heads.shape[1], -1, -1)
        return mask.masked_fill(block, torch.finfo(mask.dtype).min)

    return hook


@torch.no_grad()
def generate_with_knockout(model, batch: Any, knockout: Knockout | None, max_new_tokens: int = 32,
                           **generate_kwargs: Any):
    """Plain KV-cached generation under one knockout (the reference the shared-prefix sweep must equal)."""
    prompt_map = model.modality_map(batch)
    hooks = [] if knockout is None else knockout_hooks(model, [knockout], prompt_map,
                                                       prompt_map.codes.shape[1] + max_new_tokens)
    return model.generate(batch, max_new_tokens=max_new_tokens, fwd_hooks=hooks, **generate_kwargs)


def first_target(knockouts: Sequence[Knockout | None], codes: Tensor, max_len: int) -> int:
    prompt_len = codes.shape[1]
    first = prompt_len
    for ko in knockouts:
        if ko is not None:
            hits = ko.target_positions(codes, prompt_len, max_len).any(0).nonzero()
            if len(hits):
                first = min(first, int(hits[0]))
    return first


@torch.no_grad()
def generate_knockouts(model, batch: Any, knockouts: Sequence[Knockout | None], max_new_tokens: int = 32,
                       stop_token_ids: Sequence[int] | None = None) -> Tensor:
    """Greedy tokens [n_knockouts, new] of one sample under each knockout, sharing the prompt prefix.

    The prompt up to the first target position is run once; every configuration then continues from its KV
    cache (shared, batch 1) as one row of a batch.
    """
    prompt = model.embed_prompt(batch)
    if prompt.input_ids.shape[0] != 1:
        raise InputError("generate_knockouts takes one sample (a batch of 1)")
    prompt_len = prompt.input_ids.shape[1]
    max_len = prompt_len + max_new_tokens
    for ko in knockouts:
        if ko is not None:
            ko.check_selects(prompt.modality_map.codes, prompt_len, max_len)
    split = max(first_target(knockouts, prompt.modality_map.codes, max_len), 1)
    n = len(knockouts)
    prefix = Prompt(prompt.input_ids[:, :split], prompt.inputs_embeds[:, :split], prompt.positions[:, :, :split],
                    prompt.attention_mask[:, :split], prompt.modality_map,
                    {layer: x[:, :split] for layer, x in prompt.injections.items()})
    state = model.prefill(prefix, max_new_tokens=0)
    cache = SharedPrefixKVCache(state.cache, n_rows=n, max_new=prompt_len - split + max_new_tokens)
    hooks = knockout_hooks(model, list(knockouts), ModalityMap(prompt.modality_map.codes.expand(n, -1)), max_len)
    with model.hooks(fwd_hooks=hooks):
        logits = state.logits.expand(n, -1)
        if split < prompt_len:
            rest = prompt.inputs_embeds[:, split:].expand(n, -1, -1)
            resid = model.run_blocks(rest, prompt.positions[:, :, split:].expand(-1, n, -1),
                                     prompt.attention_mask.expand(n, -1), cache,
                                     {layer: x[:, split:].expand(n, -1, -1) for layer, x in prompt.injections.items()})
            logits = model.unembed(resid[:, -1])
        start = DecodeState(cache, prompt.attention_mask.expand(n, -1), next_position(prompt).expand(-1, n, -1),
                            logits)
        return model.decode(start, max_new_tokens, Sampling(), model.stop_tensor(stop_token_ids))


@dataclass
class SweepRow:
    sample_id: str
    prompt: str
    source: str  # "none" for the unblocked baseline
    centre_layer: int | None
    layers: list[int]
    include_last_prompt_position: bool
    text: str
    tokens: list[int]

    def key(self) -> tuple:
        return (self.sample_id, self.prompt, self.source, self.centre_layer)


def sweep_configurations(n_layers: int, sources: Sequence[str], window: int, include_last_prompt_position: bool,
                         baseline: bool) -> list[tuple[str, int | None, Knockout | None]]:
    configs: list[tuple[str, int | None, Knockout | None]] = [("none", None, None)] if baseline else []
    for source in sources:
        for centre, layers in layer_windows(n_layers, window):
            configs.append((source, centre, Knockout(sources=(source,), layers=layers,
                                                     include_last_prompt_position=include_last_prompt_position)))
    return configs


def knockout_sweep(model, rows: Iterable[ManifestRow], out_path: str | Path, *,
                   sources: Sequence[str] = ("audio", "video"), prompts: Sequence[str] = PAPER_PROMPTS,
                   window: int = 9, max_new_tokens: int = 64, include_last_prompt_position: bool = True,
                   baseline: bool = True, max_rows_per_pass: int = 64, fps: float = 2.0,
                   sampling_rate: int = 16000, **prepare_kwargs: Any) -> Path:
    """The paper's sweep: per sample and prompt, every (source, centred window) knockout plus a baseline.

    rows: manifest rows (`hooked_av.data.manifest.read_manifest`), as `caption_manifest` takes them; sample ids
    must be unique. Each clip is decoded once (frames at `fps`, sound at `sampling_rate`), the sound interleaved
    into the video when it is the video's own track. One JSONL row per (sample, prompt, source, centre layer) is
    written as soon as the sample's configurations are done, with the checkpoint's name and weights hash (`model`,
    `model_hash`: the judge keys scores by it); rerunning skips rows already in the file, and a file another
    checkpoint wrote is refused. A
    configuration whose source selects no position of the sample (no image in a video clip) is not run: it is
    recorded in `<out>.skipped.jsonl` with the reason. A sample whose media cannot be read is logged, recorded in
    `<out>.errors.jsonl`, and skipped.
    """
    rows = list(rows)
    check_unique_ids(rows)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    skipped_path = out_path.with_name(out_path.name + ".skipped.jsonl")
    done = read_done(out_path, sweep_key) | read_done(skipped_path, sweep_key)
    record = checkpoint_fields(model, out_path)
    configs = sweep_configurations(model.cfg.n_layers, sources, window, include_last_prompt_position, baseline)
    with logging_redirect_tqdm():
        for row in tqdm(rows, desc="knockout sweep", unit="sample"):
            todo = {p: [c for c in configs if (row.sample_id, p, c[0], c[1]) not in done] for p in prompts}
            if not any(todo.values()):
                continue
            try:
                sample = load_sample(row, fps, sampling_rate)
            except (HookedAVError, OSError) as err:
                log.warning("skipping sample %s: %s", row.sample_id, err)
                append_error(out_path, row.sample_id, None, err)
                continue
            for prompt, prompt_todo in todo.items():
                if prompt_todo:
                    done |= sweep_sample(model, sample_inputs(sample), row.sample_id, prompt, prompt_todo, out_path,
                                         record, max_new_tokens, include_last_prompt_position,
                                         max_rows_per_pass, fps=fps, **prepare_kwargs)
    return out_path


def sweep_sample(model, media: dict[str, Any], sample_id: str, prompt: str,
                 configs: list[tuple[str, int | None, Knockout | None]], out_path: Path,
                 record: Mapping[str, str], max_new_tokens: int,
                 include_last_prompt_position: bool, max_rows_per_pass: int, **prepare_kwargs: Any) -> set:
    """Run one sample's configurations under one prompt, append their rows (and skips); the keys written."""
    try:
        batch = model.prepare_inputs(prompt, **media, **prepare_kwargs)
    except HookedAVError as err:
        log.warning("skipping sample %s / %r: %s", sample_id, prompt, err)
        append_error(out_path, sample_id, prompt, err)
        return set()
    codes = model.modality_map(batch).codes
    prompt_len = codes.shape[1]
    runnable, skips = [], []
    for source, centre, ko in configs:
        try:
            if ko is not None:
                ko.check_selects(codes, prompt_len, prompt_len + max_new_tokens)
            runnable.append((source, centre, ko))
        except EmptySelectionError as err:
            skips.append({"sample_id": sample_id, "prompt": prompt, "source": source, "centre_layer": centre,
                          "layers": list(ko.layers), "reason": str(err)})
    if skips:
        append_rows(out_path.with_name(out_path.name + ".skipped.jsonl"), skips)
    stops = set(model.adapter.stop_token_ids())
    rows = []
    for start in range(0, len(runnable), max_rows_per_pass):
        chunk = runnable[start:start + max_rows_per_pass]
        tokens = generate_knockouts(model, batch, [c[2] for c in chunk], max_new_tokens)
        texts = model.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        for (source, centre, ko), row_tokens, text in zip(chunk, tokens.tolist(), texts):
            rows.append(SweepRow(sample_id, prompt, source, centre, list(ko.layers) if ko else [],
                                 include_last_prompt_position, text, trim_after_stop(row_tokens, stops)))
    append_rows(out_path, ({**asdict(r), **record} for r in rows))
    return {r.key() for r in rows} | {sweep_key(s) for s in skips}


def sweep_key(row: Mapping[str, Any]) -> tuple:
    """What identifies a sweep row (or a recorded skip): sample, prompt, source and centre layer."""
    return (row["sample_id"], row["prompt"], row["source"], row["centre_layer"])


def trim_after_stop(tokens: list[int], stops: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[:i + 1]
    return tokens


def append_error(out_path: Path, sample_id: str, prompt: str | None, err: Exception) -> None:
    append_rows(out_path.with_name(out_path.name + ".errors.jsonl"),
                [{"sample_id": sample_id, "prompt": prompt, "error": type(err).__name__, "message": str(err)}])


def load_sweep(path: str | Path):
    """The sweep file as a pandas DataFrame."""
    import pandas as pd

    return pd.read_json(path, lines=True)


# Fig. 6 scores each modality under the prompt that asks for it.
TASK_PROMPTS = {"video": "Describe what you see.", "audio": "Describe what you hear."}


def knockout_score_table(score_rows: Iterable[Mapping[str, Any]], task_prompts: Mapping[str, str] = TASK_PROMPTS):
    """The judge's scores of a sweep (hooked_av.eval.score_captions on the sweep file) as the table of Fig. 6.

    Columns: sample_id, setting ("factual"/"counterfactual"), task (the modality scored under its prompt), source
    ("none" for the baseline), centre_layer, score. Failure records (no score) are left out.
    """
    import pandas as pd

    rows = [{"sample_id": r["sample_id"], "setting": "counterfactual" if r.get("counterfactual") else "factual",
             "task": r["modality"], "source": r["source"], "centre_layer": r.get("centre_layer"), "score": r["score"]}
            for r in score_rows
            if r.get("score") is not None and "source" in r and task_prompts.get(r["modality"]) == r["prompt"]]
    return pd.DataFrame(rows, columns=["sample_id", "setting", "task", "source", "centre_layer", "score"])
