"""Score a captions file against its manifest: one JSONL row per (sample, prompt, modality), resumably.

Inputs are plain JSONL written by hooked_av/data (read here as dicts):
- manifest (validated by hooked_av.data.manifest.read_manifest): sample_id, audio_captions (list of human
  captions), video_caption (str or null), counterfactual;
- captions row: sample_id, prompt, caption, model, model_hash, counterfactual (hooked_av.data.caption_run), a
  knockout sweep row: sample_id, prompt, source, centre_layer, text, model, model_hash
  (hooked_av.analysis.knockout), one per configuration, or a logit-lens word-set row: sample_id, prompt, words,
  model, model_hash
  (hooked_av.analysis.logit_lens.latent_words_run), scored with modalities=("latent_audio",).
Output row: sample_id, prompt, modality, caption_model, caption_model_hash (the captions row's model and
model_hash: two checkpoints' captions of one sample are two keys), counterfactual (from the manifest when the
captions row has none), [source, centre_layer for sweep rows], status, score, reasoning, attempts, judge_model,
error, raw (raw only on failures, to keep the file small).

Rows are appended after every chunk, so an interrupted run loses at most one chunk of work (and its judge
answers are in the cache). A rerun skips the keys already present, tolerates a torn last line (that row is
simply scored again), and with retry_failed re-scores failure records: the newer row supersedes the older one,
which is why load_scores keeps the last row of each key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from hooked_av.eval.errors import EvalDataError
from hooked_av.eval.judge import FAILED, Judge, JudgeRequest, JudgeResult
from hooked_av.data.jsonl import append_rows, iter_rows, output_file
from hooked_av.data.manifest import read_manifest
from hooked_av.eval.rubric import AUDIO_FIDELITY, LATENT_AUDIO, VIDEO_FIDELITY

# "latent_audio" scores a logit-lens word set (paper Sec. 6) against the audio captions.
FIDELITY_RUBRICS = {"audio": AUDIO_FIDELITY, "video": VIDEO_FIDELITY, "latent_audio": LATENT_AUDIO}
CAPTION_FIELDS = ("sample_id", "prompt")
TEXT_FIELDS = ("caption", "text", "words")  # captions rows / knockout sweep rows / logit-lens word sets
VARIANT_FIELDS = ("source", "centre_layer")  # a knockout sweep has one caption per configuration

ScoreKey = tuple[str, ...]  # (sample_id, prompt, modality, caption_model, caption_model_hash, source, centre_layer)


@dataclass
class ScoreSummary:
    scored: int = 0  # rows written with status ok
    failed: int = 0  # failure records written
    skipped_existing: int = 0  # already in the output file
    missing_reference: int = 0  # the manifest has no reference for that modality (e.g. video_caption null)


def score_key(row: dict[str, Any]) -> ScoreKey:
    return (str(row["sample_id"]), str(row.get("prompt") or ""), str(row["modality"]),
            str(row.get("caption_model") or ""), str(row.get("caption_model_hash") or ""),
            *(str(row.get(f)) for f in VARIANT_FIELDS))


def load_scores(path: str | Path) -> list[dict[str, Any]]:
    """Score rows of `path`, the last row of each key (a retried failure supersedes its failure record)."""
    latest: dict[ScoreKey, dict[str, Any]] = {}
    for row in iter_rows(path):
        if {"sample_id", "modality"} <= row.keys():
            latest[score_key(row)] = row
    return list(latest.values())


def references(sample: dict[str, Any], modality: str) -> list[str]:
    """The human reference captions of a manifest row for one modality (empty when there is none)."""
    if modality in ("audio", "latent_audio"):
        captions = sample.get("audio_captions") or []
        return [captions] if isinstance(captions, str) else [c for c in captions if c]
    return [sample["video_caption"]] if sample.get("video_caption") else []


def _check_fields(row: dict[str, Any], fields: Iterable[str], source: Path) -> None:
    missing = [f for f in fields if f not in row]
    if missing:
        raise EvalDataError(f"{source}: a row lacks {missing}: {str(row)[:200]}")


def _load_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """The manifest's rows by sample_id, validated as `caption` and `build-counterfactuals` validate it."""
    return {row.sample_id: {"sample_id": row.sample_id, "audio_captions": row.audio_captions,
                            "video_caption": row.video_caption, "counterfactual": row.counterfactual}
            for row in read_manifest(path)}


def caption_text(row: dict[str, Any], source: Path) -> str:
    field = next((f for f in TEXT_FIELDS if f in row), None)
    if field is None:
        raise EvalDataError(f"{source}: a row has none of {list(TEXT_FIELDS)}: {str(row)[:200]}")
    value = row[field]
    return ", ".join(value) if isinstance(value, list) else str(value or "")


def score_row(caption: dict[str, Any], sample: dict[str, Any], modality: str, result: JudgeResult) -> dict[str, Any]:
    return {"sample_id": caption["sample_id"], "prompt": caption["prompt"], "modality": modality,
            "caption_model": caption.get("model"), "caption_model_hash": caption.get("model_hash"),
            "counterfactual": caption.get("counterfactual", sample.get("counterfactual")),
            **{f: caption[f] for f in VARIANT_FIELDS if f in caption},
            "status": result.status, "score": result.score, "reasoning": result.reasoning,
            "attempts": result.attempts, "judge_model": result.judge_model, "error": result.error,
            "raw": result.raw if result.status == FAILED else None}


def score_captions(manifest_path: str | Path, captions_path: str | Path, out_path: str | Path, judge: Judge, *,
                   modalities: Sequence[str] = ("audio", "video"), chunk_size: int = 64,
                   retry_failed: bool = False) -> ScoreSummary:
    """Judge every caption for each modality and append the score rows to out_path (see module docstring)."""
    manifest_path, captions_path, out_path = Path(manifest_path), Path(captions_path), output_file(out_path)
    unknown = set(modalities) - FIDELITY_RUBRICS.keys()
    if unknown:
        raise EvalDataError(f"unknown modalities {sorted(unknown)}; choose from {sorted(FIDELITY_RUBRICS)}")
    if not captions_path.is_file():
        raise EvalDataError(f"captions file not found: {captions_path}")
    manifest = _load_manifest(manifest_path)
    done = {score_key(r) for r in load_scores(out_path) if not (retry_failed and r.get("status") == FAILED)}
    summary = ScoreSummary()
    todo: list[tuple[dict[str, Any], dict[str, Any], str, JudgeRequest]] = []
    for caption in iter_rows(captions_path):
        _check_fields(caption, CAPTION_FIELDS, captions_path)
        text = caption_text(caption, captions_path)
        sample = manifest.get(str(caption["sample_id"]))
        if sample is None:
            raise EvalDataError(f"{captions_path}: sample {caption['sample_id']!r} is not in {manifest_path}")
        for modality in modalities:
            key = score_key({**caption, "modality": modality, "caption_model": caption.get("model"),
                             "caption_model_hash": caption.get("model_hash")})
            refs = references(sample, modality)
            if key in done:
                summary.skipped_existing += 1
            elif not refs:
                summary.missing_reference += 1
            else:
                done.add(key)  # a caption row repeated in the file is scored once
                todo.append((caption, sample, modality, JudgeRequest(FIDELITY_RUBRICS[modality], tuple(refs), text)))
    if todo:
        judge.check()
    with tqdm(total=len(todo), desc="judging", unit="request", disable=not todo) as bar:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start:start + chunk_size]
            results = judge.score_many([request for *_, request in chunk])
            append_rows(out_path, [score_row(caption, sample, modality, result)
                                   for (caption, sample, modality, _), result in zip(chunk, results)])
            summary.failed += sum(r.status == FAILED for r in results)
            summary.scored += sum(r.status != FAILED for r in results)
            bar.update(len(chunk))
    return summary
